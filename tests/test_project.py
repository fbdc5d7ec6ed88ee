import pytest
tomllib = pytest.importorskip("tomllib")

from conftest import ROOT


def test_requirements_txt_mirrors_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    mirrored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert sorted(mirrored) == sorted(declared)


def test_only_one_opencv_wheel_is_installed():
    from importlib.metadata import distributions

    names = {d.metadata["Name"].lower() for d in distributions()}
    assert len(names & {"opencv-python", "opencv-python-headless", "opencv-contrib-python",
                        "opencv-contrib-python-headless"}) == 1

import pytest
from conftest import ROOT

tomllib = pytest.importorskip("tomllib")


def test_requirements_txt_mirrors_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    mirrored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert sorted(mirrored) == sorted(declared)


def test_only_one_opencv_wheel_is_installed():
    from importlib.metadata import distributions

    names = {d.metadata["Name"].lower() for d in distributions()}
    assert (
        len(
            names
            & {"opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"}
        )
        == 1
    )


def test_readme_documents_exactly_the_flags_main_has():
    import re

    import main

    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(--[a-z-]+)` \|", readme, flags=re.MULTILINE))
    parser_flags = {"--" + f.name.replace("_", "-") for f in main.fields(main.Config)}
    assert documented == parser_flags


def test_readme_has_the_two_commands_and_a_chinese_quick_start():
    readme = (ROOT / "README.md").read_text()
    assert "uv run main.py" in readme and "uv run pytest" in readme
    assert "快速开始" in readme
    assert (ROOT / "docs" / "live_window.png").exists()

"""Minimal live loop (the full viewer arrives with the live-viewer issue)."""

import ale_py
import gymnasium as gym

from autoencoder import create_streaming_ae

if __name__ == "__main__":
    gym.register_envs(ale_py)
    env = gym.make("ALE/Breakout-v5")
    frame, _ = env.reset(seed=0)
    model = create_streaming_ae()
    try:
        while True:
            results = model.update_params(frame)
            print(f"step {results['step']} psnr {results['psnr'].item():.2f} dB", flush=True)
            frame, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                frame, _ = env.reset()
    except KeyboardInterrupt:
        pass

"""
``deep-sarsa enjoy``: plays a saved model greedily (with the env's action masks when it has them) in
a window, or records it to a GIF or, with the ``video`` extra, to an MP4 file that
:class:`_VideoWriter` writes frame by frame and renames into place only when complete.
"""

import argparse
import pathlib
from typing import Any

import gymnasium as gym
import numpy as np
from sb3_contrib.common.maskable.utils import get_action_masks

from deep_sarsa.cli.common import MissingExtra, UsageError, console
from deep_sarsa.cli.env_settings import make_wrapped_env
from deep_sarsa.cli.evaluations import masked
from deep_sarsa.cli.run_folder import env_of, load_model, model_file
from deep_sarsa.deep_sarsa import DeepSARSA


class _VideoWriter:
    """
    Writes RGB frames to an MP4 file (H.264, yuv420p) with imageio's ffmpeg plugin, one at a time.

    Frames of odd width or height are padded by one black row or column: H.264 in yuv420p needs
    even sizes.

    :param path: the MP4 file
    :param fps: frames per second
    """

    def __init__(self, path: pathlib.Path, fps: int) -> None:
        import imageio.v2 as imageio

        # Written next to the target and renamed when complete: an interrupted recording leaves no broken file
        self.path, self.partial = path, path.with_name(f".{path.stem}.partial.mp4")
        self.writer = imageio.get_writer(
            self.partial, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1
        )
        self.frames = 0

    def append(self, frame: np.ndarray) -> None:
        """
        :param frame: an ``(H, W, 3)`` uint8 image
        """
        height, width = frame.shape[:2]
        frame = np.pad(np.asarray(frame, dtype=np.uint8), ((0, height % 2), (0, width % 2), (0, 0)))
        self.writer.append_data(frame)
        self.frames += 1

    def close(self, complete: bool) -> None:
        """
        Finish the file.

        :param complete: keep the video (renamed to its final name), else delete it
        """
        self.writer.close()
        if complete:
            self.partial.replace(self.path)
        else:
            self.partial.unlink(missing_ok=True)


def _require_video_extra() -> None:
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as error:
        raise MissingExtra(f"--record needs imageio and imageio-ffmpeg ({error}): pip install 'deep-sarsa[video]'") from error


def _action(model: DeepSARSA, env: gym.Env, obs: Any) -> Any:
    """The greedy action, masked when the env has masks; an int for a Discrete space (toy-text envs index with it)."""
    masks = get_action_masks(env) if masked(model, env) else None
    action, _ = model.predict(obs, deterministic=True, action_masks=masks)
    return int(action) if isinstance(env.action_space, gym.spaces.Discrete) else action


def enjoy(args: argparse.Namespace) -> int:
    """Watch a saved model (needs a display), or record it to a GIF or an MP4 video."""
    output = args.gif or args.record
    if output is not None and not output.parent.is_dir():
        raise UsageError(f"cannot write {output}: the folder {output.parent} does not exist")
    if args.record is not None:
        if args.record.suffix.lower() != ".mp4":
            raise UsageError(f"--record writes an MP4 video: the file name must end in .mp4, got {args.record}")
        _require_video_extra()
    model_path = model_file(args.model)
    model = load_model(model_path, args.trusted, buffer_size=1)
    settings, where = env_of(model_path, args.env)
    render_mode = "rgb_array" if output is not None else "human"
    env = make_wrapped_env(settings, render_mode=render_mode, where=where, trusted=args.trusted)
    frames: list[np.ndarray] = []
    video = _VideoWriter(args.record, int(env.metadata.get("render_fps") or 30)) if args.record else None
    complete = False
    try:
        for episode in range(args.episodes):
            obs, _ = env.reset(seed=args.seed + episode)
            done, total = False, 0.0
            while not done:
                if video is not None:
                    video.append(np.asarray(env.render()))
                elif args.gif:
                    frames.append(np.asarray(env.render()))
                obs, reward, terminated, truncated, _ = env.step(_action(model, env, obs))
                total += float(reward)
                done = terminated or truncated
            console.print(f"episode {episode + 1}: return {total:.2f}")
        complete = True
    finally:
        env.close()
        if video is not None:
            video.close(complete)
    if video is not None:
        console.print(f"recorded {video.frames} frames to {args.record}", soft_wrap=True)
    if args.gif:
        from PIL import Image

        images = [Image.fromarray(frame) for frame in frames]
        images[0].save(args.gif, save_all=True, append_images=images[1:], duration=33, loop=0)
        console.print(f"recorded {len(images)} frames to {args.gif}", soft_wrap=True)
    return 0

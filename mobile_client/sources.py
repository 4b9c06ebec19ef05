"""Frame sources: camera, video file, images (file, directory or glob) and the synthetic video.

:func:`live` turns a source into a live feed (the camera always; a video file with ``--live``): a thread reads it at
its own pace and only the latest frame waits to be taken; a frame replaced by a newer one before it was taken comes
out as ``dropped`` (no image), so the client never works on a stale frame.

Each :class:`Source` yields :class:`Frame` objects holding an RGB uint8 ``H x W x 3`` array; an image that
cannot be read is yielded with ``error`` set so that it is reported as a failed frame instead of vanishing.
A source that cannot be opened raises :class:`SourceError` when it is created, before any frame is read.
"""

from __future__ import annotations

import glob
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class SourceError(RuntimeError):
    """A source that cannot be opened; the message is one line for the user."""


@dataclass
class Frame:
    index: int
    source: str
    image: np.ndarray | None
    error: str | None = None
    dropped: bool = False  #: a live source replaced it by a newer frame before the client took it
    captured_at: float | None = None  #: ``time.monotonic()`` when a live source read it


@dataclass
class Source:
    """Frames plus their number when it is known in advance (None for a camera)."""

    frames: Iterator[Frame]
    total: int | None
    fps: float | None = None  #: a video file's own frame rate


def _quiet_opencv() -> None:
    """OpenCV's own warnings are not for users (``cv2.utils.logging`` in OpenCV 5, ``cv2.setLogLevel`` in 4.x)."""
    logging = getattr(cv2.utils, "logging", None)
    if logging is not None:
        logging.setLogLevel(logging.LOG_LEVEL_ERROR)
    else:
        cv2.setLogLevel(2)  # LOG_LEVEL_ERROR


def _capture(target: int | str, name: str, label: str) -> Source:
    _quiet_opencv()
    cap = cv2.VideoCapture(target)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"cannot open {name}")
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = cap.get(cv2.CAP_PROP_FPS)
    is_file = isinstance(target, str)
    return Source(
        _read_capture(cap, label), count if count > 0 and is_file else None, fps if fps > 0 and is_file else None
    )


def _read_capture(cap: cv2.VideoCapture, label: str) -> Iterator[Frame]:
    try:
        index = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield Frame(index, f"{label}#{index}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
    finally:
        cap.release()


def camera(device: int) -> Source:
    """Frames of camera ``device`` (OpenCV index) until the camera stops delivering."""
    return _capture(device, f"camera {device}", f"camera:{device}")


def video(path: str | Path) -> Source:
    """Frames of a video file."""
    if not Path(path).is_file():
        raise SourceError(f"video file not found: {path}")
    return _capture(str(path), f"video {path}", str(path))


def image_paths(spec: str) -> list[Path]:
    """The image files named by ``spec``: one file, every image file of a directory, or a glob pattern."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise SourceError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in directory {spec}")
        return found
    found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not found:
        raise SourceError(f"no images match {spec}")
    return found


def _read_images(paths: list[Path]) -> Iterator[Frame]:
    for index, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                image = np.array(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            yield Frame(index, str(path), None, f"cannot read image: {e}")
            continue
        yield Frame(index, str(path), image)


def images(spec: str) -> Source:
    """The files of :func:`image_paths`, in sorted order; an unreadable file yields a frame with ``error``."""
    paths = image_paths(spec)
    return Source(_read_images(paths), len(paths))


def synthetic(
    num_frames: int,
    seed: int = 0,
    empty_ratio: float | None = None,
    run_frames: tuple[int, int] = (15, 30),
    static_ratio: float = 0.0,
) -> Source:
    """:class:`synthetic.SyntheticVideo`: moving objects with stretches of empty frames (``empty_ratio`` of them,
    the scene default when None, between runs of ``run_frames`` frames with objects) and ``static_ratio`` of the
    frames in static stretches (only the sensor noise changes)."""
    from splitdet.synthetic.video import SyntheticVideo  # only --synthetic needs the data generator

    if num_frames < 1:
        raise SourceError(f"--synthetic needs at least 1 frame, got {num_frames}")
    frames = SyntheticVideo(
        num_frames, seed=seed, empty_ratio=empty_ratio, run_frames=run_frames, static_ratio=static_ratio
    )
    return Source((Frame(i, f"synthetic:{seed}#{i}", im) for i, (im, _) in enumerate(frames)), num_frames)


def live(source: Source, fps: float | None = None) -> Source:
    """``source`` as a live feed: a thread reads it, at ``fps`` frames per second when given (a video file played at
    its own rate) or as fast as it delivers (a camera), and keeps only the latest frame. Taking a frame first
    yields, in order, the frames replaced since the last take, as ``dropped`` frames without an image."""
    return Source(_latest(source.frames, fps), source.total, source.fps)


def _latest(frames: Iterator[Frame], fps: float | None) -> Iterator[Frame]:
    cond = threading.Condition()
    stop = threading.Event()
    state: dict = {"latest": None, "dropped": [], "ended": False, "error": None}

    def grab() -> None:
        start = time.monotonic()
        try:
            for n, frame in enumerate(frames):
                if fps and stop.wait(max(0.0, start + n / fps - time.monotonic())):
                    return
                if stop.is_set():
                    return
                frame.captured_at = time.monotonic()
                with cond:
                    if (old := state["latest"]) is not None:
                        state["dropped"].append(
                            Frame(old.index, old.source, None, dropped=True, captured_at=old.captured_at)
                        )
                    state["latest"] = frame
                    cond.notify_all()
        except BaseException as e:  # re-raised to the consumer
            state["error"] = e
        finally:
            if hasattr(frames, "close"):
                frames.close()
            with cond:
                state["ended"] = True
                cond.notify_all()

    threading.Thread(target=grab, name="live-source", daemon=True).start()
    try:
        while True:
            with cond:
                cond.wait_for(lambda: state["dropped"] or state["latest"] is not None or state["ended"])
                dropped, state["dropped"] = state["dropped"], []
                frame, state["latest"] = state["latest"], None
            if not dropped and frame is None:
                if state["error"] is not None:
                    raise state["error"]
                return
            yield from dropped
            if frame is not None:
                yield frame
    finally:
        stop.set()

"""Scene parameters (:class:`SceneConfig`) and seeding: every image is a pure function of an integer seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SceneConfig:
    """Parameters of a synthetic scene; sizes are fractions of ``min(height, width)``."""

    height: int = 160
    width: int = 160
    min_objects: int = 1
    max_objects: int = 4
    empty_ratio: float = 0.2  #: share of images without any object of interest
    min_size_frac: float = 0.15  #: smallest object extent (a person's height is x person_scale)
    max_size_frac: float = 0.6
    person_ratio: float = 0.3  #: probability that an object is a person
    person_scale: float = 1.25  #: a person's height over the object extent drawn for it
    #: share of persons with their back to the camera. A stick figure has no face: facing away, it looks exactly like
    #: a figure facing the camera with left and right swapped, so its keypoints' sides cannot be told from the image
    #: (0 for keypoint scenes)
    person_facing_away: float = 0.5
    min_distractors: int = 2  #: distractor shapes behind the objects (more on empty images)
    max_distractors: int = 5
    front_distractor_prob: float = 0.35  #: probability of one small distractor in front of objects
    min_visible_frac: float = 0.2  #: drop objects whose visible share of their area is smaller
    min_visible_area: int = 12  #: ... or whose visible area (pixels) is smaller
    low_contrast_prob: float = 0.4  #: probability that an object's colour is close to its background
    shadow_prob: float = 0.3  #: probability that an object casts a soft shadow
    blur_prob: float = 0.6  #: probability of a slight global Gaussian blur (camera optics)
    max_noise_std: float = 6.0  #: sensor noise std (uint8 units) is drawn from [0.5, max]

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16:
            raise ValueError(f"SceneConfig: height and width must be >= 16, got {self.height}x{self.width}")
        if self.min_objects < 0 or self.min_objects > self.max_objects:
            raise ValueError(
                f"SceneConfig: need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if self.min_distractors < 0 or self.min_distractors > self.max_distractors:
            raise ValueError(
                "SceneConfig: need 0 <= min_distractors <= max_distractors, "
                f"got {self.min_distractors}, {self.max_distractors}"
            )
        if not 0.0 < self.min_size_frac <= self.max_size_frac <= 1.0:
            raise ValueError(
                "SceneConfig: need 0 < min_size_frac <= max_size_frac <= 1, "
                f"got {self.min_size_frac}, {self.max_size_frac}"
            )
        for name in (
            "empty_ratio",
            "person_ratio",
            "person_facing_away",
            "front_distractor_prob",
            "low_contrast_prob",
            "shadow_prob",
            "blur_prob",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SceneConfig: {name} must be in [0, 1], got {value}")
        if not 0.0 < self.min_visible_frac <= 1.0:
            raise ValueError(f"SceneConfig: min_visible_frac must be in (0, 1], got {self.min_visible_frac}")
        if not 0.0 < self.person_scale <= 3.0:
            raise ValueError(f"SceneConfig: person_scale must be in (0, 3], got {self.person_scale}")
        if self.min_visible_area < 1:
            raise ValueError(f"SceneConfig: min_visible_area must be >= 1, got {self.min_visible_area}")
        if self.max_noise_std < 0:
            raise ValueError(f"SceneConfig: max_noise_std must be >= 0, got {self.max_noise_std}")


def check_seed(seed: int, what: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"{what} must be a non-negative int, got {seed!r}")
    return int(seed)


def image_seed(seed: int, index: int) -> int:
    """Seed of image ``index`` of a dataset seeded ``seed`` (a hash of both; 64-bit)."""
    check_seed(seed)
    check_seed(index, "index")
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0])


def seeded_rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))

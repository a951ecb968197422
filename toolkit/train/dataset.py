"""Training samples placed into the model input exactly as at inference, then augmented."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from devices.processing import place
from devices.types import InputSpec
from toolkit.data.images import load_image
from toolkit.data.sample import Sample


def augmentations(spec: InputSpec) -> v2.Compose:
    # Scale jitter down to 0.5x teaches the small, distant people and signs of street photos, and up to 1.3x
    # the near ones, so that the size a run chooses after training may differ from the training size; colour
    # jitter covers dusk and overcast light; horizontal flips are safe for both classes (a mirrored
    # STOP sign is still a red octagon, and the letters are a few pixels at these input sizes).
    return v2.Compose(
        [
            # Brightness/contrast/saturation only: hue shifts would turn STOP-sign red into other colours.
            v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.4),
            v2.RandomAffine(degrees=0.0, translate=(0.1, 0.1), scale=(0.5, 1.3), fill=spec.pad_value),
            v2.RandomHorizontalFlip(),
            v2.SanitizeBoundingBoxes(min_size=2.0),
        ]
    )


class DetectionDataset(Dataset):
    """Samples placed into the model input exactly as at inference, then augmented.

    Returns (image float tensor in the model's input contract, boxes (G, 4) input px, labels (G,), index of
    the sample's source in ``sources``, -1 when it is not there).
    """

    def __init__(self, samples: list[Sample], spec: InputSpec, augment: bool, sources: Sequence[str] = ()) -> None:
        self.samples = samples
        self.spec = spec
        self.augment = augmentations(spec) if augment else None
        self.sources = list(sources)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        sample = self.samples[i]
        placed, pl = place(load_image(sample.image_path), self.spec)
        boxes = sample.boxes * np.array([pl.scale_x, pl.scale_y, pl.scale_x, pl.scale_y], np.float32)
        boxes = boxes + np.array([pl.pad_x, pl.pad_y, pl.pad_x, pl.pad_y], np.float32)
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(placed[:, :, ::-1])).permute(2, 0, 1))
        data = {
            "image": image,
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(boxes), format="XYXY", canvas_size=tuple(placed.shape[:2])
            ),
            "labels": torch.tensor(sample.labels, dtype=torch.long),
        }
        if self.augment is not None:
            data = self.augment(data)
        rgb = data["image"].float()
        x = rgb if self.spec.channel_order == "RGB" else rgb.flip(0)
        x = x * self.spec.scale
        mean = torch.tensor(self.spec.mean).view(3, 1, 1)
        std = torch.tensor(self.spec.std).view(3, 1, 1)
        x = (x - mean) / std
        source = self.sources.index(sample.source) if sample.source in self.sources else -1
        return x, data["boxes"].as_subclass(torch.Tensor).float(), data["labels"].long(), source


def collate(batch: list) -> tuple[torch.Tensor, list, torch.Tensor]:
    images = torch.stack([b[0] for b in batch])
    targets = [(b[1], b[2]) for b in batch]
    sources = torch.tensor([b[3] for b in batch])
    return images, targets, sources


def one_per_group(samples: list[Sample], seed: int) -> list[Sample]:
    """Keep one copy of each photo: Roboflow's set is three augmented copies of each; our own
    augmentation replaces them, and an epoch costs a third of the time."""
    rng = random.Random(seed)
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.group, []).append(s)
    return [rng.choice(members) for members in groups.values()]


class EpochPhotos(Sampler):
    """The photos of each epoch: the user's photos once and a fresh draw of bundled ones beside them.

    With ``share`` 0.5 as many bundled photos as the user's: an epoch stays short on a few dozen photos (so a
    run of a fixed number of steps gives them many epochs), and the bundled photos keep what the other sources
    taught. Without user photos, every bundled photo once.
    """

    def __init__(self, user: Sequence[int], bundled: Sequence[int], share: float, seed: int) -> None:
        self.user, self.bundled = list(user), list(bundled)
        self.rng = random.Random(seed)
        wanted = round(len(self.user) * (1 - share) / share) if self.user else len(self.bundled)
        self.n_bundled = min(len(self.bundled), wanted)

    def __len__(self) -> int:
        return len(self.user) + self.n_bundled

    def __iter__(self) -> Iterator[int]:
        order = self.user + self.rng.sample(self.bundled, self.n_bundled)
        self.rng.shuffle(order)
        return iter(order)

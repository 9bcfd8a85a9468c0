"""The judge: an independent MNIST digit classifier that scores generated samples.

It is never part of a graph: a small CNN trained once on the MNIST train split
(3 epochs, random shifts of up to ±2 px; about 4 minutes on one CPU thread), its
accuracy measured on the test split (about 0.994), and cached. It reads images exactly as the graphs represent them: float
``(B, 1, 32, 32)`` in ``[-0.5, 0.5)``, MNIST's 28x28 zero-padded to 32x32, 8 bits,
dequantised (:meth:`tzkgraph.data.dataset.GraphData.observations`,
:func:`tzkgraph.use.sampling.sample_path`). Samples are not clamped, so
:meth:`Judge.predict` clamps to ``[-0.5, 0.5]`` first, as ``save_grid`` does.

Cache: ``<data root>/judge/mnist_judge.pt`` (``~/.cache/tzkgraph/data/judge/`` unless
``$TZKGRAPH_DATA`` is set), written atomically. A cache that cannot be read
(truncated, corrupt, another layout) is rebuilt with a warning; delete it to retrain.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tzkgraph.core.files import atomic_write
from tzkgraph.core.runtime import seeded
from tzkgraph.data.registry import default_root
from tzkgraph.data.sources import dequantise, load_images, pad_to, quantise

__all__ = ["Judge", "JudgeNet", "load_judge", "train_judge", "judge_accuracy", "CACHE_NAME"]

CACHE_NAME = "mnist_judge.pt"
FORMAT = 1  # bump when the net or the saved layout changes: older caches are then rebuilt
SIZE, BITS, SHIFT = 32, 8, 2  # the graphs' MNIST format; augmentation shift in pixels
Source = Callable[[str], tuple[Tensor, Tensor]]  # split -> uint8 (N, 1, 28, 28), int64 (N,)


class JudgeNet(nn.Module):
    """Conv blocks (conv, BN, ReLU, 2x2 max-pool; three: 32 -> 16 -> 8 -> 4), dropout, a linear layer to 10 logits."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128)):
        super().__init__()
        self.widths = [int(w) for w in widths]
        layers, c = [], 1
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 5 if i == 0 else 3, padding=2 if i == 0 else 1, bias=False),
                       nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(c * (SIZE >> len(widths)) ** 2, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _observations(images: Tensor, seed: int) -> Tensor:
    """uint8 ``(N, 1, 28, 28)`` -> the graphs' float ``(N, 1, 32, 32)`` in ``[-0.5, 0.5)``, seeded noise."""
    x = quantise(pad_to(images, SIZE), BITS)
    return dequantise(x, BITS, torch.Generator(x.device).manual_seed(seed))


def _shift(x: Tensor, generator: torch.Generator) -> Tensor:
    """Each image moved by its own random offset of up to ±SHIFT px, filled with the background -0.5."""
    b, s = x.shape[0], x.shape[-1]
    padded = nn.functional.pad(x, (SHIFT,) * 4, value=-0.5)
    dy, dx = (torch.randint(0, 2 * SHIFT + 1, (2, b, 1), generator=generator, device=x.device)
              + torch.arange(s, device=x.device))
    return padded[torch.arange(b, device=x.device)[:, None, None], 0, dy[:, :, None], dx[:, None, :]].unsqueeze(1)


class Judge:
    """A trained :class:`JudgeNet` in eval mode and its accuracy on the MNIST test split.

    Attributes:
        net: the network, on ``device``.
        test_accuracy: share of the test split it classified right when it was trained.
    """

    def __init__(self, net: JudgeNet, test_accuracy: float):
        self.net = net.eval()
        self.test_accuracy = float(test_accuracy)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 1000) -> Tensor:
        """The digit of each image, int64 ``(B,)`` on ``images``' device.

        Arguments:
            images: float ``(B, C, 32, 32)`` in ``[-0.5, 0.5)`` (clamped; ``C = 3`` is averaged to grey).
        """
        if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[-2:] != (SIZE, SIZE):
            raise ValueError(f"the judge reads (B, 1 or 3, {SIZE}, {SIZE}) images, got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"the judge reads float images in [-0.5, 0.5), got {images.dtype}")
        x = images.detach().float().mean(1, keepdim=True).clamp(-0.5, 0.5)
        out = [self.net(chunk.to(self.device)).argmax(1) for chunk in x.split(batch_size)]
        return torch.cat(out).to(images.device) if out else torch.zeros(0, dtype=torch.long, device=images.device)

    def state(self) -> dict:
        """What the cache holds (plain tensors and numbers: loadable with ``weights_only=True``)."""
        return {"format": FORMAT, "test_accuracy": self.test_accuracy, "widths": self.net.widths,
                "net": {k: v.cpu() for k, v in self.net.state_dict().items()}}

    @classmethod
    def from_state(cls, state: dict, device: torch.device | str = "cpu") -> "Judge":
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"not a judge of format {FORMAT}")
        net = JudgeNet(state["widths"])
        net.load_state_dict(state["net"])
        return cls(net.to(device), state["test_accuracy"])


def train_judge(source: Source, *, epochs: float = 3, limit: int | None = None, batch_size: int = 128,
                lr: float = 3e-3, widths: Sequence[int] = (32, 64, 128), seed: int = 0,
                device: torch.device | str = "cpu", progress: bool = True) -> Judge:
    """Trains a judge on ``source("train")`` and measures it on ``source("test")``.

    Adam with a one-cycle learning rate, random ±2 px shifts, fresh seeded dequantisation noise.

    Arguments:
        source: ``split -> (uint8 (N, 1, 28, 28) pixels 0..255, int64 (N,) digits)``, e.g. MNIST's.
        epochs: passes over the training images (fractions allowed; at least one step).
        limit: use only the first ``limit`` training and test images (for tests).
        widths: the channels of the three conv blocks (smaller for tests).
        seed: seeds the initialisation, shuffling, shifts and noise.
    """
    with seeded(seed, device):
        images, labels = (t[:limit].to(device) for t in source("train"))
        net = JudgeNet(widths).to(device)
        steps = max(1, round(epochs * len(images) / batch_size))
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        generator = torch.Generator(device).manual_seed(seed)
        net.train()
        order = torch.empty(0, dtype=torch.long, device=device)
        for step in tqdm(range(steps), desc="judge", unit="step", disable=not progress):
            if len(order) < batch_size:  # a new epoch: reshuffle
                order = torch.cat([order, torch.randperm(len(images), generator=generator, device=device)])
            index, order = order[:batch_size], order[batch_size:]
            x = _shift(_observations(images[index], seed * 1_000_003 + step), generator)
            loss = nn.functional.cross_entropy(net(x), labels[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        judge = Judge(net, 0.0)
        test_images, test_labels = (t[:limit] for t in source("test"))
        judge.test_accuracy = judge_accuracy(judge, _observations(test_images, seed + 1), test_labels)
    return judge


def judge_accuracy(judge: Judge, images: Tensor, digits: int | Sequence[int] | Tensor) -> float:
    """The share of ``images`` that ``judge`` classifies as ``digits`` (one digit for all, or one per image)."""
    predicted = judge.predict(images)
    expected = torch.as_tensor(digits, dtype=torch.long, device=predicted.device).expand_as(predicted)
    return (predicted == expected).double().mean().item() if len(predicted) else float("nan")


def load_judge(cache_dir: str | os.PathLike | None = None, device: torch.device | str = "cpu",
               progress: bool = True, *, source: Source | None = None, **train_options) -> Judge:
    """The cached judge, trained and saved first if there is none (or the cache is unreadable).

    Arguments:
        cache_dir: where ``mnist_judge.pt`` lives; default ``<data root>/judge``.
        device: where the judge runs (and trains, if it must).
        progress: a progress bar while training.
        source: the training data (default: MNIST through :func:`tzkgraph.data.sources.load_images`,
            fetched first if missing); only used when training.
        train_options: passed to :func:`train_judge` (``epochs``, ``limit``, ``seed``, ...).
    """
    path = Path(cache_dir if cache_dir is not None else default_root() / "judge") / CACHE_NAME
    if path.exists():
        try:
            return Judge.from_state(torch.load(path, map_location=device, weights_only=True), device)
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as e:
            warnings.warn(f"{path}: unreadable judge cache ({type(e).__name__}: {str(e)[:100]}); rebuilding it",
                          stacklevel=2)
    started = time.perf_counter()
    judge = train_judge(source or (lambda split: load_images("mnist", split)), device=device,
                        progress=progress, **train_options)
    atomic_write(path, lambda tmp: torch.save(judge.state(), tmp))
    if progress:
        print(f"judge: test accuracy {judge.test_accuracy:.4f}, trained in {time.perf_counter() - started:.0f} s,"
              f" saved to {path}", file=sys.stderr, flush=True)
    return judge

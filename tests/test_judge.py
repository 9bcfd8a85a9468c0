"""The judge (tzkgraph.use.judge): a tiny one trained in seconds on synthetic digits, no network, no MNIST."""

from __future__ import annotations

import pytest
import torch

from tzkgraph.data.dataset import GraphData
from tzkgraph.use import judge as judge_module
from tzkgraph.use.judge import CACHE_NAME, Judge, judge_accuracy, load_judge

TINY = {"epochs": 4, "batch_size": 32, "widths": (8, 16, 16), "progress": False}  # 50 steps, a fraction of a second


def patterns(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic "digits": ten fixed random 7x7 binary patterns blown up to 28x28 (4 px blocks), on faint noise."""
    templates = (torch.rand(10, 7, 7, generator=torch.Generator().manual_seed(0)) > 0.5).to(torch.uint8) * 215
    g = torch.Generator().manual_seed(1 if split == "train" else 2)
    n = 400 if split == "train" else 200
    labels = torch.randint(0, 10, (n,), generator=g)
    noise = torch.randint(0, 40, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    return templates[labels].repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1) + noise, labels


def no_data(split: str):
    raise AssertionError("the judge was retrained although a cache was there")




@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """``(cache folder, judge)``: a tiny judge trained on :func:`patterns` and saved there."""
    folder = tmp_path_factory.mktemp("judge")
    return folder, load_judge(folder, source=patterns, **TINY)


def pipeline_images(n: int = 20) -> torch.Tensor:
    """Images exactly as the graphs' data pipeline gives them: dequantised 8-bit 32x32 in [-0.5, 0.5)."""
    images, labels = patterns("test")
    padded = torch.nn.functional.pad(images[:n], (2, 2, 2, 2))
    data = GraphData(padded, torch.zeros(n, dtype=torch.long), labels[:n], ["mnist"], bits=8)
    return data.observations(torch.arange(n), fixed=True)


def test_trains_saves_and_loads_without_retraining(cached):
    folder, judge = cached
    assert judge.test_accuracy > 0.8  # the patterns are easy; the real judge reaches >= 0.99 on MNIST
    saved = torch.load(folder / CACHE_NAME, weights_only=True)
    assert saved["test_accuracy"] == judge.test_accuracy and saved["format"] == judge_module.FORMAT
    again = load_judge(folder, source=no_data, **TINY)
    images = pipeline_images()
    assert again.test_accuracy == judge.test_accuracy
    assert torch.equal(again.predict(images), judge.predict(images))
    assert [p.name for p in folder.iterdir()] == [CACHE_NAME]  # no temporary files left


def test_training_is_seeded(cached, tmp_path):
    _, judge = cached
    twin = load_judge(tmp_path, source=patterns, **TINY)
    for a, b in zip(judge.net.state_dict().values(), twin.net.state_dict().values()):
        assert torch.equal(a, b)


def test_predict_reads_the_pipeline_format(cached):
    _, judge = cached
    images = pipeline_images()
    assert images.shape == (20, 1, 32, 32) and images.min() >= -0.5 and images.max() < 0.5
    predicted = judge.predict(images)
    assert predicted.dtype == torch.long and predicted.shape == (20,)
    assert predicted.min() >= 0 and predicted.max() <= 9
    assert torch.equal(judge.predict(images.expand(-1, 3, -1, -1)), predicted)  # 3-channel greys
    assert torch.equal(judge.predict(images * 1.5), judge.predict(images.clamp(-0.5, 0.5) * 1.5))
    assert judge.predict(images[:0]).shape == (0,)
    with pytest.raises(ValueError, match="32, 32"):
        judge.predict(images[:, 0])  # (B, 32, 32): no channel dimension
    with pytest.raises(ValueError):
        judge.predict(torch.zeros(2, 1, 28, 28))  # unpadded MNIST
    with pytest.raises(TypeError, match="float"):
        judge.predict(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))  # quantised, not dequantised


def test_judge_accuracy(cached):
    _, judge = cached
    images = pipeline_images()
    predicted = judge.predict(images)
    assert judge_accuracy(judge, images, predicted) == 1.0
    assert judge_accuracy(judge, images, predicted.tolist()) == 1.0
    share = (predicted == 3).float().mean().item()
    assert judge_accuracy(judge, images, 3) == pytest.approx(share)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other layout"])
def test_unreadable_cache_is_rebuilt(cached, tmp_path, damage):
    folder, judge = cached
    good = (folder / CACHE_NAME).read_bytes()
    path = tmp_path / CACHE_NAME
    if damage == "garbage":
        path.write_bytes(b"not a torch file")
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    else:
        torch.save({"format": 0, "net": {}}, path)
    with pytest.warns(UserWarning, match="unreadable judge cache.*rebuilding"):
        rebuilt = load_judge(tmp_path, source=patterns, **TINY)
    assert rebuilt.test_accuracy == judge.test_accuracy
    assert load_judge(tmp_path, source=no_data, **TINY).test_accuracy == judge.test_accuracy


def test_a_failed_save_leaves_no_cache(tmp_path, monkeypatch):
    def broken_save(obj, path):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(Exception, match="cannot write"):
        load_judge(tmp_path, source=patterns, **TINY)
    assert list(tmp_path.iterdir()) == []


def test_loaded_judge_is_on_the_asked_device(cached):
    folder, _ = cached
    judge = load_judge(folder, device="cpu", source=no_data)
    assert isinstance(judge, Judge) and judge.device.type == "cpu" and not judge.net.training

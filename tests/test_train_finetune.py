"""Fine-tuning: on a synthetic two-class set where the stock model is near chance, a few epochs
with the last stage unfrozen raise validation AUC far above it; resume after an interruption
reproduces the uninterrupted run; freezing, splitting, caching and augmentation do what they say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from nsfwlab import Detector, PreprocessConfig
from nsfwlab.checkpoint import read_checkpoint
from nsfwlab.errors import ConfigError
from nsfwlab.evaluate import LabelledItem, load_folder
from nsfwlab.model import load_open_nsfw
from nsfwlab.preprocess import preprocess
from nsfwlab.train import (
    MAX_UNFREEZE,
    NO_AUGMENT,
    VGG16,
    AugmentConfig,
    FinetuneConfig,
    augment_batch,
    finetune,
    prepare,
    set_trainable,
    stratified_split,
)
from nsfwlab.train.finetune import Arch
from synthetic import shapes_image


def make_set(root: Path, per_class: int) -> Path:
    for cls, sub in ((0, "safe"), (1, "nsfw")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(shapes_image(cls, i)).save(root / sub / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_set(tmp_path_factory.mktemp("shapes"), 24)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_set(tmp_path_factory.mktemp("shapes_small"), 10)


def test_finetune_beats_the_stock_model(shapes_dir: Path, tmp_path: Path) -> None:
    data = load_folder(shapes_dir)
    stock = load_open_nsfw()
    config = FinetuneConfig(unfreeze=1, epochs=2, lr=3e-4, val_fraction=0.25, seed=0)
    result = finetune(data, config)
    assert result.n_train == 36 and result.n_val == 12
    assert result.history[0].epoch == 0 and result.history[0].val_auc == result.baseline_auc
    assert result.baseline_auc < 0.75, "the stock model should be near chance on this set"
    assert result.best_auc >= 0.95
    assert result.best_auc - result.baseline_auc >= 0.25
    # frozen weights (everything below stage 3) are untouched; the top stage and head moved
    tuned, orig = result.model.state_dict(), stock.state_dict()
    for k in orig:
        if k.startswith(("conv_1", "stage0", "stage1", "stage2")):
            assert torch.equal(tuned[k], orig[k]), k
    assert not torch.equal(tuned["fc_nsfw.weight"], orig["fc_nsfw.weight"])
    assert not torch.equal(tuned["stage3_block2.branch2c.weight"], orig["stage3_block2.branch2c.weight"])

    # the checkpoint loads through the Detector and separates the classes there too
    path = result.save(tmp_path / "tuned.pt")
    meta = read_checkpoint(path)["meta"]
    assert meta["best_val_auc"] == result.best_auc and meta["config"]["unfreeze"] == 1
    with Detector(model=path, device="cpu") as det:
        scores = [r.score for r in det.score_many(data.paths)]
    assert roc_auc_score(data.labels, scores) > 0.95


def _interrupt_after(epoch: int):
    def cb(stats) -> None:
        if stats.epoch == epoch:
            raise KeyboardInterrupt

    return cb


def test_resume_continues_to_the_same_result(small_dir: Path, tmp_path: Path) -> None:
    data = load_folder(small_dir)
    config = FinetuneConfig(unfreeze=0, epochs=2, lr=1e-3, val_fraction=0.3, patience=5, batch_size=8)
    full = finetune(data, config, state_path=tmp_path / "full.state.pt")

    state = tmp_path / "run.state.pt"
    with pytest.raises(KeyboardInterrupt):
        finetune(data, config, state_path=state, on_epoch=_interrupt_after(1))
    saved = read_checkpoint(state)["train_state"]
    assert saved["epoch"] == 1 and len(saved["history"]) == 2
    seen: list[int] = []
    resumed = finetune(data, config, state_path=state, resume=True, on_epoch=lambda s: seen.append(s.epoch))
    assert seen == [2]  # only the epoch left was trained
    assert [h.val_auc for h in resumed.history] == pytest.approx([h.val_auc for h in full.history])
    assert [h.train_loss for h in resumed.history[1:]] == pytest.approx([h.train_loss for h in full.history[1:]])
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # the best weights
    last_full = read_checkpoint(tmp_path / "full.state.pt")
    last_resumed = read_checkpoint(state)
    assert last_resumed["train_state"]["epoch"] == 2
    for k, v in last_full["state_dict"].items():  # the last weights, and the optimizer moments
        assert torch.allclose(v, last_resumed["state_dict"][k], atol=1e-6), k
    moments = last_resumed["train_state"]["optimizer"]["state"]
    assert moments and all(int(s["step"]) == 4 for s in moments.values())
    # the resumed epoch really trained the head
    stock_fc = load_open_nsfw().state_dict()["fc_nsfw.weight"]
    assert not torch.equal(last_resumed["state_dict"]["fc_nsfw.weight"], stock_fc)

    with pytest.raises(ConfigError, match="configuration differs"):
        finetune(data, FinetuneConfig(unfreeze=1, epochs=2, lr=1e-3, val_fraction=0.3, batch_size=8),
                 state_path=state, resume=True)
    with pytest.raises(ConfigError, match="no training state to continue from"):
        finetune(data, config, state_path=tmp_path / "missing.pt", resume=True)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            finetune(data, config, device="cuda")


def test_vgg16_from_scratch_trains_and_loads(tmp_path: Path) -> None:
    root = make_set(tmp_path / "tiny", 3)
    data = load_folder(root)
    config = FinetuneConfig(arch=Arch.VGG16, epochs=1, val_fraction=0.34, batch_size=4, augment=NO_AUGMENT)
    result = finetune(data, config)
    assert len(result.history) == 2 and result.history[1].train_loss is not None
    assert all(p.requires_grad is False for p in result.model.parameters())
    path = result.save(tmp_path / "vgg.pt")
    assert read_checkpoint(path)["arch"] == "vgg16"
    x = torch.from_numpy(preprocess(data.paths[0])[None]).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = torch.softmax(result.model(x), dim=1)[0, 1].item()
    with Detector(model=path, device="cpu") as det:
        assert det.nsfw_score(data.paths[0]) == pytest.approx(expected, abs=1e-5)


def test_set_trainable_counts_stages_from_the_top() -> None:
    model = load_open_nsfw()

    def trainable() -> set[str]:
        return {n.split(".")[0].split("_block")[0] for n, p in model.named_parameters() if p.requires_grad}

    set_trainable(model, Arch.OPEN_NSFW, 0)
    assert trainable() == {"fc_nsfw"}
    set_trainable(model, Arch.OPEN_NSFW, 1)
    assert trainable() == {"fc_nsfw", "stage3"}
    set_trainable(model, Arch.OPEN_NSFW, 4)
    assert trainable() == {"fc_nsfw", "stage0", "stage1", "stage2", "stage3"}
    set_trainable(model, Arch.OPEN_NSFW, 5)
    assert trainable() == {"fc_nsfw", "stage0", "stage1", "stage2", "stage3", "conv_1"}
    with pytest.raises(ConfigError):
        FinetuneConfig(unfreeze=6)


@pytest.mark.parametrize("arch", list(Arch))
def test_unfreezing_n_stages_trains_exactly_their_parameters(arch: Arch) -> None:
    model = load_open_nsfw() if arch is Arch.OPEN_NSFW else VGG16()
    stages = model.stages()
    for n in range(MAX_UNFREEZE + 1):
        first = set_trainable(model, arch, n)
        expected = 0 if arch is Arch.VGG16 else len(stages) - 1 - n  # vgg16 always trains everything
        assert first == expected
        wanted = {id(p) for _, modules in stages[expected:] for m in modules for p in m.parameters()}
        assert {id(p) for p in model.parameters() if p.requires_grad} == wanted


def test_the_frozen_prefix_keeps_nothing_for_backward() -> None:
    """Head-only training costs one forward pass: with the body frozen, autograd saves only what
    the fc layer needs (the pooled features), never a feature map."""
    from nsfwlab.model import OpenNSFW

    model = OpenNSFW()
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    for unfreeze, most in ((0, 2 * 1024 + 2 * 1024), (1, 10**9)):
        set_trainable(model, Arch.OPEN_NSFW, unfreeze)
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.zeros(2, 3, 224, 224)).sum().backward()
        assert 0 < sum(saved) <= most
    assert sum(saved) > 100_000  # with stage 3 trainable its feature maps are kept


def test_stratified_split_is_seeded_stratified_and_keeps_duplicates_together() -> None:
    labels = [0] * 20 + [1] * 10
    groups = [f"g{i}" for i in range(30)]
    groups[1] = groups[0]  # two identical files
    train, val = stratified_split(labels, groups, 0.2, seed=3)
    again = stratified_split(labels, groups, 0.2, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not np.array_equal(val, stratified_split(labels, groups, 0.2, seed=4)[1])
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(30))
    y = np.asarray(labels)
    assert int(np.sum(y[val] == 1)) == 2 and int(np.sum(y[val] == 0)) in (4, 5)
    assert (0 in val) == (1 in val)
    with pytest.raises(ConfigError, match="at least 2 distinct nsfw"):
        stratified_split([0, 0, 1], ["a", "b", "c"], 0.5, 0)


def test_prepare_is_the_exact_preprocessing_and_reports_bad_files(small_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    items = [*load_folder(small_dir).items[:3], LabelledItem(bad, 1)]
    prepared = prepare(items, cache_dir=tmp_path / "cache")
    assert len(prepared) == 3 and prepared.pixels.dtype == np.uint8
    assert [p.path for p in prepared.problems] == [str(bad)]
    for i, it in enumerate(items[:3]):
        assert np.array_equal(prepared.batch([i])[0], preprocess(it.path))
    cached = prepare(items, cache_dir=tmp_path / "cache")
    assert isinstance(cached.pixels, np.memmap)
    assert np.array_equal(np.asarray(cached.pixels), prepared.pixels) and cached.paths == prepared.paths
    assert cached.problems == prepared.problems


def test_prepare_is_exact_with_another_mean(small_dir: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache keeps the core's transport form, exact for any mean; when a row cannot be packed
    as uint8, the whole set is kept as float32 rather than mixing the two."""
    import nsfwlab.train.cache as cache

    config = PreprocessConfig(mean_bgr=(103.94, 116.78, 123.68))
    items = load_folder(small_dir).items[:2]
    for cache_dir in (None, tmp_path / "cache", tmp_path / "cache"):  # fresh, written, read back
        prepared = prepare(items, config, cache_dir=cache_dir)
        assert prepared.pixels.dtype == np.uint8
        for i, it in enumerate(items):
            assert np.array_equal(prepared.batch([i])[0], preprocess(it.path, config))
    calls: list[int] = []
    original = cache.pack_array

    def pack_all_but_one(arr: np.ndarray, mean: tuple[float, float, float]) -> np.ndarray:
        calls.append(1)
        return arr if len(calls) == 2 else original(arr, mean)

    monkeypatch.setattr(cache, "pack_array", pack_all_but_one)
    prepared = prepare(items, config, workers=1)
    assert prepared.pixels.dtype == np.float32
    for i, it in enumerate(items):
        assert np.array_equal(prepared.batch([i])[0], preprocess(it.path, config))


def test_augmentation_is_seeded_and_leaves_its_input_alone() -> None:
    x = torch.from_numpy(np.stack([preprocess(shapes_image(0, i)) for i in range(3)])).permute(0, 3, 1, 2)
    copy = x.clone()
    a = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(1))
    b = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(1))
    c = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(2))
    assert torch.equal(x, copy)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape
    mean = torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)
    assert float((a + mean).min()) >= 0.0 and float((a + mean).max()) <= 255.0
    flipped = augment_batch(x, AugmentConfig(flip=1.0, crop_scale=1.0, brightness=0, contrast=0),
                            torch.Generator().manual_seed(0))
    assert torch.equal(flipped, x.flip(-1))
    assert torch.equal(augment_batch(x, NO_AUGMENT, torch.Generator()), x)
    with pytest.raises(ConfigError):
        AugmentConfig(crop_scale=0.2)


def test_cli_finetune_resume_and_onnx_export(small_dir: Path, tmp_path: Path) -> None:
    from nsfwlab.cli import app

    out = tmp_path / "m.pt"
    runner = CliRunner()
    args = ["finetune", str(small_dir), "--out", str(out), "--unfreeze", "0", "--epochs", "1", "--lr", "1e-3",
            "--val-fraction", "0.3", "--batch-size", "8"]
    res = runner.invoke(app, [*args, "--export-onnx", str(tmp_path / "m.onnx"), "--progress"])
    assert res.exit_code == 0, res.output
    assert "validation AUC: start" in res.output and (tmp_path / "m.state.pt").is_file()
    assert "preprocessing" in res.output and "training" in res.output  # the progress bars
    assert (tmp_path / "m.history.png").read_bytes().startswith(b"\x89PNG")
    # the exported ONNX graph scores like its checkpoint
    imgs = sorted((small_dir / "safe").iterdir())[:3] + sorted((small_dir / "nsfw").iterdir())[:3]
    with Detector(model=out, device="cpu") as a, Detector(model=tmp_path / "m.onnx", device="cpu") as b:
        assert b.backend.name == "onnxruntime"
        sa = [r.score for r in a.score_many(imgs)]
        sb = [r.score for r in b.score_many(imgs)]
    assert np.allclose(sa, sb, atol=1e-4)
    # one more epoch on top of the saved state
    res = runner.invoke(app, [*args[:7], "2", *args[8:], "--resume"])
    assert res.exit_code == 0, res.output
    assert len(read_checkpoint(out)["meta"]["history"]) == 3
    res = runner.invoke(app, ["finetune", str(small_dir), "--out", str(out), "--arch", "resnet"])
    assert res.exit_code == 2 and "unknown --arch 'resnet'" in res.output
    res = runner.invoke(app, ["export-onnx", str(tmp_path / "nope.pt"), str(tmp_path / "x.onnx")])
    assert res.exit_code == 3


def test_a_damaged_preprocessing_cache_is_rebuilt_not_fatal(small_dir: Path, tmp_path: Path) -> None:
    """The cache only saves time: a cut-short or damaged one used to end the run with a traceback
    (UnicodeDecodeError, JSONDecodeError, ...)."""
    items = load_folder(small_dir).items[:4]
    cache = tmp_path / "cache"
    fresh = prepare(items, cache_dir=cache)
    (npy,) = cache.glob("prep-*.npy")
    meta = npy.with_suffix(".json")
    good_meta, good_npy = meta.read_bytes(), npy.read_bytes()
    for damage in (lambda: meta.write_bytes(b"\xc0\x80 junk"), lambda: meta.write_text('{"labels": [0]}'),
                   lambda: meta.write_text('{"labels": [0], "paths": ["a"], "problems": []}'),
                   lambda: meta.write_text("[" * 200_000), lambda: meta.write_text('{"labels": [NaN]}'),
                   lambda: npy.write_bytes(good_npy[:100]), lambda: npy.write_bytes(b"junk")):
        meta.write_bytes(good_meta)
        npy.write_bytes(good_npy)
        damage()
        again = prepare(items, cache_dir=cache)
        assert np.array_equal(np.asarray(again.pixels), fresh.pixels) and again.paths == fresh.paths
    assert isinstance(prepare(items, cache_dir=cache).pixels, np.memmap)  # rewritten whole, used again


def test_finetune_takes_a_non_utf8_file_name(small_dir: Path, tmp_path: Path) -> None:
    """Hashing the file list for the cache key and the split id used to die on such a name."""
    import os
    import shutil

    from nsfwlab.cli import app as cli_app

    data = tmp_path / "data"
    shutil.copytree(small_dir, data)
    shutil.copy(data / "nsfw" / "000.png", os.fsdecode(os.fsencode(str(data / "nsfw")) + b"/b\xffd.png"))
    args = ["finetune", str(data), "--out", str(tmp_path / "m.pt"), "--epochs", "1", "--unfreeze", "0",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.pt").is_file()


def test_an_incomplete_training_state_is_a_config_error(tmp_path: Path) -> None:
    from nsfwlab.checkpoint import save_checkpoint
    from nsfwlab.train.finetune import TrainState

    model = load_open_nsfw()
    optimizer = torch.optim.AdamW(model.fc_nsfw.parameters())
    config = FinetuneConfig()
    path = save_checkpoint(tmp_path / "cut.state.pt", model,
                           extra={"train_state": {"config": config.to_dict(), "split": "s1"}})
    with pytest.raises(ConfigError, match="not a complete training state"):
        TrainState.resume(path, model, optimizer, config, "s1")
    with pytest.raises(ConfigError, match="split has changed"):
        TrainState.resume(path, model, optimizer, config, "s2")
    plain = save_checkpoint(tmp_path / "plain.pt", model)
    with pytest.raises(ConfigError, match="not a training state"):
        TrainState.resume(plain, model, optimizer, config, "s1")


@pytest.mark.parametrize(("field", "value", "flag"), [
    ("lr", 0.0, "--lr"), ("lr", float("nan"), "--lr"), ("weight_decay", -1.0, "--weight-decay"),
    ("epochs", 0, "--epochs"), ("epochs", 10**9, "--epochs"), ("patience", 0, "--patience"),
    ("batch_size", 10**7, "--batch-size"), ("val_fraction", 1.0, "--val-fraction"), ("unfreeze", 9, "--unfreeze"),
    ("arch", "resnet", "--arch"),
])
def test_config_errors_name_the_parameter_not_a_flag(field: str, value: object, flag: str) -> None:
    from nsfwlab.cli._common import fail

    with pytest.raises(ConfigError) as info:
        FinetuneConfig(**{field: value})  # type: ignore[arg-type]
    exc = info.value
    assert exc.param == field and "--" not in str(exc) and field in str(exc)
    assert flag in exc.render({field: flag})
    assert fail(exc).exit_code == 2


class _TinyNet(torch.nn.Module):
    """A registered architecture with the contract of the table: NCHW BGR 224 in, 2 logits out, stages()."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=16, stride=16)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x / 128.0).mean(dim=(2, 3)))

    def stages(self) -> list:
        return [("features", [self.conv]), ("head", [self.fc])]


def test_finetune_trains_an_architecture_registered_later(small_dir: Path, tmp_path: Path) -> None:
    """finetune used to keep its own list of two architecture names and refuse any other."""
    from nsfwlab.architectures import ARCHITECTURES, register_architecture

    register_architecture("tiny_test_net", _TinyNet)
    try:
        config = FinetuneConfig(arch="tiny_test_net", unfreeze=0, epochs=1, batch_size=8, augment=NO_AUGMENT)
        assert config.arch == "tiny_test_net" and config.from_scratch
        model = _TinyNet()
        assert set_trainable(model, config.arch, 0) == 0  # from scratch: every stage trains
        assert all(p.requires_grad for p in model.parameters())
        result = finetune(load_folder(small_dir), config)
        assert isinstance(result.model, _TinyNet) and len(result.history) == 2
        saved = read_checkpoint(result.save(tmp_path / "tiny.pt"))
        assert saved["arch"] == "tiny_test_net"
        # 4 validation images: the validation AUC comes with a warning (it used to read 1.0 on 10 images, unqualified)
        assert result.val_counts == (2, 2) and saved["meta"]["warnings"] == list(result.warnings)
        assert result.warnings[0].startswith("validation AUC rests on 2 safe and 2 nsfw images")
    finally:
        ARCHITECTURES.pop("tiny_test_net", None)
    assert FinetuneConfig(arch=Arch.VGG16).arch == "vgg16"  # the enum's names still work


def test_near_duplicates_stay_on_one_side_of_the_split(tmp_path: Path, photos) -> None:
    """Resized copies of one photo used to land on both sides of the split (validation AUC then
    measures memory): they are grouped by PDQ distance now."""
    from nsfwlab.train.finetune import prepare_data

    items = []
    for i, (name, arr) in enumerate(sorted(photos.items())):
        img = Image.fromarray(arr).convert("RGB")
        for j, size in enumerate((None, (300, 300), (200, 260))):
            path = tmp_path / f"{name}_{j}.jpg"
            (img if size is None else img.resize(size)).save(path, quality=85)
            items.append(LabelledItem(path, i % 2))
    twins = {str(it.path): it.path.stem.rsplit("_", 1)[0] for it in items}

    def sides(data) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for side, idx in (("train", data.train_idx), ("val", data.val_idx)):
            for k in idx:
                out.setdefault(twins[data.prepared.paths[int(k)]], set()).add(side)
        return out

    split_apart = False
    for seed in range(4):
        cfg = FinetuneConfig(val_fraction=0.3, seed=seed)
        grouped = prepare_data(items, cfg, PreprocessConfig(), cache_dir=tmp_path / "cache")  # preprocessed once
        assert all(len(v) == 1 for v in sides(grouped).values()), sides(grouped)
        assert grouped.near_duplicates == 2 * len(photos)
        plain = prepare_data(items, cfg, PreprocessConfig(), cache_dir=tmp_path / "cache", near_duplicate_distance=None)
        split_apart |= any(len(v) == 2 for v in sides(plain).values())
    assert split_apart, "without grouping some photo should straddle the split (the test would prove nothing)"


def test_crops_of_one_source_named_in_the_csv_stay_on_one_side(tmp_path: Path, photos) -> None:
    """Crops that cut a third of a photo are beyond PDQ (100+ bits apart): a CSV's group column
    keeps them together, where they used to be split across train and validation."""
    from nsfwlab.datasets import load_csv
    from nsfwlab.train.finetune import prepare_data

    rows = []
    for i, (name, arr) in enumerate(sorted(photos.items())):
        img = Image.fromarray(arr).convert("RGB")
        w, h = img.size
        for j, box in enumerate(((0, 0, 2 * w // 3, 2 * h // 3), (w // 3, h // 3, w, h))):
            img.crop(box).save(tmp_path / f"{name}_{j}.png")
            rows.append(f"{name}_{j}.png,{i % 2},{name}")
    (tmp_path / "grouped.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "plain.csv").write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")

    def straddling(csv_name: str, seed: int) -> list[str]:
        data = prepare_data(load_csv(tmp_path / csv_name).items, FinetuneConfig(val_fraction=0.3, seed=seed),
                            PreprocessConfig(), cache_dir=tmp_path / "cache")
        val = {Path(data.prepared.paths[int(k)]).stem.rsplit("_", 1)[0] for k in data.val_idx}
        train = {Path(data.prepared.paths[int(k)]).stem.rsplit("_", 1)[0] for k in data.train_idx}
        return sorted(val & train)

    assert any(straddling("plain.csv", seed) for seed in range(4))  # PDQ alone does not join them
    assert not any(straddling("grouped.csv", seed) for seed in range(4))


def test_worker_counts_are_bounded(small_dir: Path) -> None:
    from nsfwlab.datasets import near_duplicate_groups
    from nsfwlab.train.cache import MAX_WORKERS

    items = load_folder(small_dir).items[:2]
    for call in (lambda: prepare(items, workers=10**6), lambda: prepare(items, workers=0),
                 lambda: near_duplicate_groups([it.path for it in items], workers=10**6)):
        with pytest.raises(ConfigError, match=r"workers must lie in \[1, ") as info:
            call()
        assert info.value.param == "workers"
    assert MAX_WORKERS == 256


@pytest.mark.parametrize(("field", "value"), [("flip", 1.5), ("crop_scale", 0.1), ("brightness", float("nan")),
                                              ("brightness", 1e9), ("contrast", -0.1)])
def test_augmentation_errors_name_their_parameter(field: str, value: float) -> None:
    with pytest.raises(ConfigError) as info:
        AugmentConfig(**{field: value})  # type: ignore[arg-type]
    assert info.value.param == field and str(info.value).startswith(field)


def test_near_duplicate_errors_name_finetune_s_parameter(small_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from nsfwlab.train.finetune import prepare_data

    everything = load_folder(small_dir).items
    items = everything[:2] + everything[-2:]  # two of each class
    with pytest.raises(ConfigError, match="near_duplicate_distance must be") as info:
        prepare_data(items, FinetuneConfig(), PreprocessConfig(), near_duplicate_distance=300)
    assert info.value.param == "near_duplicate_distance"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pdqhash" else real(name, *a))
    with pytest.raises(ConfigError, match="needs the pdqhash package") as info:
        prepare_data(items, FinetuneConfig(), PreprocessConfig())
    assert "near_duplicate_distance=None" in str(info.value)
    prepare_data(items, FinetuneConfig(val_fraction=0.5), PreprocessConfig(), near_duplicate_distance=None)

"""The public names of the evaluate and train packages are pinned, and the CLI stays light:
importing it (as `nsfwlab score` does) loads neither scikit-learn, matplotlib nor the training code."""

from __future__ import annotations

import subprocess
import sys

import nsfwlab.evaluate
import nsfwlab.train


def test_public_names_are_pinned() -> None:
    assert sorted(nsfwlab.evaluate.__all__) == sorted([
        "DEFAULT_TARGETS", "Confusion", "DuplicateGroup", "Evaluation", "Hygiene", "Interval", "LabelledItem",
        "LabelledSet", "Metrics", "Problem", "Recommendation", "ScoredItem", "TargetKind", "TargetRate",
        "bootstrap_interval", "check_hygiene", "compute_metrics", "confusion", "evaluate", "load_csv",
        "load_folder", "load_labelled", "parse_label", "recommend_threshold", "recommend_thresholds"])
    assert sorted(nsfwlab.train.__all__) == sorted([
        "MAX_UNFREEZE", "NO_AUGMENT", "VGG16", "Arch", "AugmentConfig", "EpochStats", "FinetuneConfig",
        "FinetuneResult", "PreparedSet", "augment_batch", "finetune", "prepare", "set_trainable",
        "stratified_split"])
    for mod in (nsfwlab.evaluate, nsfwlab.train):
        assert all(hasattr(mod, name) for name in mod.__all__)


def test_vgg16_is_in_the_core_table_for_checkpoints() -> None:
    # VGG-16 used to be registered by importing nsfwlab.train from the core (an import circle):
    # now the core's table holds it and building it never imports a capability.
    code = ("import sys; from nsfwlab.checkpoint import ARCHITECTURES, build_architecture; "
            "assert 'vgg16' in ARCHITECTURES; m = build_architecture('vgg16'); "
            "assert type(m).__name__ == 'VGG16' and 'nsfwlab.train' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


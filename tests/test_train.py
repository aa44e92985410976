"""The trainer: overfitting, exact kill-and-resume, 2-process DDP, checkpoints and the CLI."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import asrkd.loop as loop_module
from asrkd.checkpoint import (
    list_epoch_checkpoints,
    list_step_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
)
from asrkd.cli import main as cli_main
from asrkd.config import ConfigError, TrainConfig
from asrkd.data import ManifestError, read_manifest
from asrkd.inference import Transcriber, evaluate
from asrkd.loop import FeatureAugment
from asrkd.synth import synthesize_corpus
from asrkd.train import Trainer, read_log

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ten_utts(tmp_path_factory) -> Path:
    """10 synthetic spoken-digit utterances (espeak-ng), made once for this module."""
    out = tmp_path_factory.mktemp("synth10")
    return synthesize_corpus(task="digits", n=10, out_dir=out, seed=3, workers=1)


def tiny_config(manifest: Path, out_dir: Path, **changes) -> dict:
    """A config for the smallest preset with no augmentation: fast and easy to reason about."""
    cfg = {
        "data": {"train": [str(manifest)], "max_batch_seconds": 1000.0, "num_workers": 0},
        "model": {"preset": "student-xs", "overrides": {"dropout": 0.0}},
        "augment": {"speed_factors": [1.0], "noise_prob": 0.0, "freq_masks": 0, "time_masks": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 10, "schedule": "constant", "max_steps": 20},
        "run": {"out_dir": str(out_dir), "threads": 1, "checkpoint_every": 1000, "progress": False},
    }
    for section, values in changes.items():
        cfg[section].update(values)
    return cfg


def test_ten_utterance_batch_overfits_to_wer_zero(ten_utts, tmp_path):
    cfg = TrainConfig.from_dict(tiny_config(ten_utts, tmp_path / "run", optim={"max_steps": 400}))
    trainer = Trainer(cfg)
    assert len(trainer.parts.data) == 1  # all 10 utterances in one batch
    best = trainer.fit()
    result = evaluate(trainer.model, trainer.parts.frontend, trainer.tokenizer, read_manifest(ten_utts))
    assert result["wer"] == 0.0, list(zip(result["refs"], result["hyps"]))
    # The checkpoint on disk transcribes the same way as the model in memory.
    transcriber = Transcriber.from_checkpoint(best)
    utts = read_manifest(ten_utts)
    texts = [h.text for h in transcriber.transcribe_files([u.audio_filepath for u in utts[:3]])]
    assert texts == [u.text for u in utts[:3]]


def _write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_kill_and_resume_reproduces_the_uninterrupted_losses(ten_utts, tmp_path):
    # Augmentation, dropout and a DataLoader worker all on: everything exact resume must handle.
    changes = dict(
        data={"max_batch_seconds": 8.0, "num_workers": 1},
        model={"preset": "student-xs", "overrides": {"dropout": 0.1}},
        augment={"speed_factors": [0.9, 1.0, 1.1], "noise_prob": 0.5, "bandlimit_prob": 0.5, "gain_prob": 0.5,
                 "breath_prob": 0.5, "vtlp_prob": 0.5, "freq_masks": 2, "time_masks": 2},
        optim={"max_steps": 40, "schedule": "cosine"},
        run={"checkpoint_every": 5, "log_every": 1, "keep_last": 2},
    )
    # Both runs in fresh processes: the DataLoader worker is forked, and forking this pytest
    # process after other tests loaded multithreaded libraries (JAX, via the TFLite converter)
    # can deadlock.
    def train(out: Path, *extra: str, wait: bool = True):
        config = _write_config(tmp_path / f"{out.name}.yaml", tiny_config(ten_utts, out, **changes))
        cmd = [sys.executable, "-m", "asrkd.cli", "train", "--config", str(config), *extra]
        if not wait:
            return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

    straight = tmp_path / "straight"
    train(straight)
    expected = {int(r["step"]): r["loss"] for r in read_log(straight) if "loss" in r}
    assert sorted(expected) == list(range(1, 41))

    killed = tmp_path / "killed"
    proc = train(killed, wait=False)
    deadline = time.time() + 120
    while not list_step_checkpoints(killed / "checkpoints") and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_from = int(list_step_checkpoints(killed / "checkpoints")[-1].name[5:])
    assert resumed_from < 40, "the run finished before it could be killed; nothing was tested"

    train(killed, "--resume")
    got = {int(r["step"]): r["loss"] for r in read_log(killed) if "loss" in r}
    assert sorted(got) == list(range(1, 41))
    for step in range(resumed_from + 1, 41):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    a = load_file(str(list_step_checkpoints(straight / "checkpoints")[-1] / "model.safetensors"))
    b = load_file(str(list_step_checkpoints(killed / "checkpoints")[-1] / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    trainer = Trainer(TrainConfig.from_dict(cfg_dict))
    trainer.fit()
    torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_process_gloo_ddp_trains_and_ranks_hold_identical_weights(ten_utts, tmp_path):
    cfg = tiny_config(ten_utts, tmp_path / "ddp", data={"max_batch_seconds": 6.0},
                      optim={"max_steps": 6})
    init = Trainer(TrainConfig.from_dict(tiny_config(ten_utts, tmp_path / "init"))).model.state_dict()
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert any(not torch.equal(w0[k], init[k]) for k in w0 if w0[k].is_floating_point())
    # 10 utterances, 6 s batches: 4 batches an epoch, 2 per rank; rank 0 saved at each epoch end.
    names = sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir())
    assert names == ["step-0000002", "step-0000004", "step-0000006"]


def test_checkpoints_are_pruned_and_best_is_tracked_by_dev_wer(ten_utts, tmp_path):
    cfg = tiny_config(ten_utts, tmp_path / "run", data={"dev": str(ten_utts), "max_batch_seconds": 8.0},
                      optim={"max_steps": 9}, run={"checkpoint_every": 1, "keep_last": 2})
    best = Trainer(TrainConfig.from_dict(cfg)).fit()
    steps = list_step_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in steps] == ["step-0000008", "step-0000009"]
    assert best == tmp_path / "run" / "checkpoints" / "best"
    loaded = load_checkpoint(best)
    assert "dev_wer" in loaded.config["metrics"]
    assert not (best / "trainer_state.pt").exists()  # best is for inference, not resuming
    assert (tmp_path / "run" / "tokens.txt").read_text().startswith("<blk> 0\n")


def test_unknown_config_key_is_named_with_its_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 1e-3\n  warmup: 10\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: optim: unknown key\(s\) \['warmup'\]"):
        TrainConfig.from_yaml(bad)


@pytest.mark.parametrize(
    "augment, message",
    [
        ("gain_prob: 1.5", r"augment.gain_prob: 1.5 is out of range \(allowed: a number in \[0, 1\]\)"),
        ("gain_db: [0, -30]", r"augment.gain_db: \[0, -30\] is not a range \(allowed: \[low, high\] with low <= high\)"),
        ("snr_db: [10]", r"augment.snr_db: \[10\] is not a range"),
        ("breath_prob: -0.1", r"augment.breath_prob: -0.1 is out of range \(allowed: a number in \[0, 1\]\)"),
        ("breath_hz: [4000, 1000]", r"augment.breath_hz: \[4000, 1000\] is not a range"),
        ("vtlp_prob: 2", r"augment.vtlp_prob: 2 is out of range \(allowed: a number in \[0, 1\]\)"),
        ("vtlp_alpha: [0.2, 1.1]", r"augment.vtlp_alpha: \[0.2, 1.1\] is out of range \(allowed: a list of numbers in \[0.5, 2\]\)"),
    ],
)
def test_bad_augmentation_values_are_named_with_their_file(tmp_path, augment, message):
    bad = tmp_path / "aug.yaml"
    bad.write_text(f"augment:\n  {augment}\n")
    with pytest.raises(ConfigError, match="aug.yaml: " + message):
        TrainConfig.from_yaml(bad)


def test_eval_and_transcribe_commands(ten_utts, tmp_path, capsys):
    cfg = TrainConfig.from_dict(tiny_config(ten_utts, tmp_path / "run", optim={"max_steps": 2}))
    ckpt = Trainer(cfg).fit()
    assert cli_main(["eval", str(tmp_path / "run"), "--manifest", str(ten_utts),
                     "--json", str(tmp_path / "eval.json")]) == 0
    out = capsys.readouterr().out
    assert "WER" in out and "per" not in out.split("\n")[0]
    lines = (tmp_path / "eval.utterances.jsonl").read_text().splitlines()
    assert len(lines) == 10
    wav = read_manifest(ten_utts)[0].audio_filepath
    assert cli_main(["transcribe", str(ckpt), wav]) == 0
    assert "confidence=" in capsys.readouterr().out
    # A lexicon: every hypothesis word is one of its words (or the hypothesis is empty).
    words = sorted({w for u in read_manifest(ten_utts) for w in u.text.split()})
    (tmp_path / "words.txt").write_text("\n".join(words) + "\n")
    assert cli_main(["eval", str(ckpt), "--manifest", str(ten_utts), "--lexicon", str(tmp_path / "words.txt"),
                     "--json", str(tmp_path / "lex.json")]) == 0
    assert f"restricted to the {len(words)} words" in capsys.readouterr().out
    summary = json.loads((tmp_path / "lex.json").read_text())
    assert summary["lexicon_words"] == len(words) and summary["beam"] == 8
    assert summary["lexicon"] == str(tmp_path / "words.txt")
    for line in (tmp_path / "lex.utterances.jsonl").read_text().splitlines():
        assert set(json.loads(line)["hyp"].split()) <= set(words)
    assert cli_main(["transcribe", str(ckpt), wav, "--lexicon", str(tmp_path / "words.txt")]) == 0
    (tmp_path / "bad.txt").write_text("two words\n")
    assert cli_main(["eval", str(ckpt), "--manifest", str(ten_utts), "--lexicon", str(tmp_path / "bad.txt")]) == 2
    assert "bad.txt:1: 'two words' is more than one word" in capsys.readouterr().err


def test_paths_in_a_yaml_config_are_relative_to_the_yaml(tmp_path):
    (tmp_path / "recipe").mkdir()
    cfg_file = tmp_path / "recipe" / "cfg.yaml"
    cfg_file.write_text("data:\n  train: ../data/train.jsonl\n  dev: dev.jsonl\nrun:\n  out_dir: ../runs/x\n")
    cfg = TrainConfig.from_yaml(cfg_file)
    assert cfg.data.train == [str(tmp_path / "data" / "train.jsonl")]
    assert cfg.data.dev == str(tmp_path / "recipe" / "dev.jsonl")
    assert cfg.run.out_dir == str(tmp_path / "runs" / "x")


def test_a_config_can_start_from_a_base_config(tmp_path):
    """`base:` merges mappings key by key, replaces lists and scalars, and keeps each file's paths."""
    (tmp_path / "common").mkdir()
    (tmp_path / "recipe").mkdir()
    (tmp_path / "common" / "root.yaml").write_text(
        "data:\n  train: [a.jsonl, b.jsonl]\n  dev: dev.jsonl\n  max_batch_seconds: 15\n"
        "model:\n  preset: teacher\n  overrides: {dropout: 0.2, n_layers: 4}\n"
        "augment:\n  speed_factors: [0.9, 1.0, 1.1]\noptim:\n  lr: 1.0e-3\n  epochs: 8\n"
        "run:\n  out_dir: ../runs/root\n")
    (tmp_path / "recipe" / "mid.yaml").write_text(
        "base: ../common/root.yaml\nfrontend: {f_max: 4000.0}\noptim:\n  epochs: 12\n")
    (tmp_path / "recipe" / "top.yaml").write_text(
        "base: mid.yaml\ndata:\n  train: [c.jsonl]\nmodel:\n  overrides: {dropout: 0.3}\n"
        "augment:\n  speed_factors: [1.0]\nrun:\n  out_dir: ../runs/top\n  seed: 1\n")
    cfg = TrainConfig.from_yaml(tmp_path / "recipe" / "top.yaml")
    assert cfg.data.train == [str(tmp_path / "recipe" / "c.jsonl")]  # a list replaces, from its own file
    assert cfg.data.dev == str(tmp_path / "common" / "dev.jsonl")  # relative to the base that set it
    assert cfg.data.max_batch_seconds == 15
    assert cfg.model.preset == "teacher"
    assert cfg.model.overrides == {"dropout": 0.3, "n_layers": 4}  # a mapping merges
    assert cfg.frontend == {"f_max": 4000.0}
    assert cfg.augment.speed_factors == [1.0]
    assert (cfg.optim.lr, cfg.optim.epochs) == (1.0e-3, 12)
    assert (cfg.run.out_dir, cfg.run.seed) == (str(tmp_path / "runs" / "top"), 1)
    assert TrainConfig.from_yaml(tmp_path / "common" / "root.yaml").optim.epochs == 8


def test_bad_base_configs_are_named(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"base files form a cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        TrainConfig.from_yaml(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"c.yaml: base: config file .*missing.yaml not found"):
        TrainConfig.from_yaml(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"d.yaml: base must be the path of another YAML config"):
        TrainConfig.from_yaml(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("base: f.yaml\n")
    (tmp_path / "f.yaml").write_text("optim:\n  warmup: 10\n")  # a typo in a base names the base
    with pytest.raises(ConfigError, match=r"f.yaml: optim: unknown key\(s\) \['warmup'\]"):
        TrainConfig.from_yaml(tmp_path / "e.yaml")


def test_every_epoch_ends_once_even_when_batch_counts_vary(ten_utts, tmp_path):
    from asrkd.data import BucketingBatchSampler

    durations = [u.duration for u in read_manifest(ten_utts)]

    def counts(budget):
        s = BucketingBatchSampler(durations, max_batch_seconds=budget, seed=0, num_buckets=2)
        out = []
        for e in range(3):
            s.set_epoch(e)
            out.append(len(s))
        return out

    budget = next(b / 4 for b in range(16, 120) if len(set(counts(b / 4))) > 1)
    cfg = tiny_config(ten_utts, tmp_path / "run",
                      data={"dev": str(ten_utts), "max_batch_seconds": budget, "num_buckets": 2},
                      optim={"max_steps": None, "epochs": 3})
    trainer = Trainer(TrainConfig.from_dict(cfg))
    assert trainer.parts.max_steps == sum(counts(budget))
    trainer.fit()
    assert trainer.loop.pos.epoch == 3
    dev_rows = [r for r in read_log(tmp_path / "run") if "dev_wer" in r]
    ends = list(itertools.accumulate(counts(budget)))
    assert [int(r["step"]) for r in dev_rows] == ends


def test_vtlp_warps_the_training_features_per_step_and_reproducibly(ten_utts, tmp_path):
    parts = Trainer(TrainConfig.from_dict(tiny_config(ten_utts, tmp_path / "a"))).parts
    batch = next(iter(parts.data))
    wavs, wav_lens, frontend = batch["wavs"], batch["wav_lens"], parts.frontend
    warped = FeatureAugment(vtlp_prob=1.0, seed=0)
    base, lens = FeatureAugment().features(frontend, wavs, wav_lens, step=0)
    first, first_lens = warped.features(frontend, wavs, wav_lens, step=0)
    assert torch.equal(lens, first_lens)
    assert torch.equal(warped.features(frontend, wavs, wav_lens, step=0)[0], first)  # (seed, step): same warp
    changed = [not torch.allclose(first[b, : lens[b]], base[b, : lens[b]], atol=1e-3) for b in range(len(lens))]
    assert all(changed)
    assert not torch.equal(warped.features(frontend, wavs, wav_lens, step=1)[0], first)  # another step, other factors


def test_dev_lexicon_decodes_the_dev_set_with_it_and_bad_ones_are_refused(ten_utts, tmp_path, monkeypatch):
    words = tmp_path / "digits.words"
    words.write_text("zero\none\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\n")
    cfg = tiny_config(ten_utts, tmp_path / "run", data={"dev": str(ten_utts), "dev_lexicon": str(words)},
                      optim={"max_steps": 2})
    seen = []
    real_evaluate = loop_module.evaluate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("lexicon"))
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop_module, "evaluate", spy)
    trainer = Trainer(TrainConfig.from_dict(cfg))
    trainer.fit()
    assert seen and all(lex is trainer.parts.dev.lexicon for lex in seen)
    assert trainer.parts.dev.lexicon.words == {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}

    cfg["data"]["dev_lexicon"] = str(tmp_path / "missing.words")
    with pytest.raises(ConfigError, match="data.dev_lexicon: .*missing.words: cannot read the lexicon"):
        Trainer(TrainConfig.from_dict(cfg))
    cfg["data"].update(dev=None, dev_lexicon=str(words))
    with pytest.raises(ConfigError, match="data.dev_lexicon is set but data.dev is not"):
        Trainer(TrainConfig.from_dict(cfg))


def test_init_from_starts_from_a_checkpoint_and_refuses_another_shape(ten_utts, tmp_path):
    first = Trainer(TrainConfig.from_dict(tiny_config(ten_utts, tmp_path / "a", optim={"max_steps": 3}))).fit()
    cfg = tiny_config(ten_utts, tmp_path / "b")
    cfg["model"]["init_from"] = str(first)
    second = Trainer(TrainConfig.from_dict(cfg))
    trained = load_checkpoint(first).model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in second.model.state_dict().items())
    assert second.tokenizer == load_checkpoint(first).tokenizer

    # dropout has no weights: a fine-tuning run may change it
    cfg["model"]["overrides"] = {"dropout": 0.25}
    third = Trainer(TrainConfig.from_dict(cfg))
    assert third.model.config.dropout == 0.25
    assert all(torch.equal(v, trained[k]) for k, v in third.model.state_dict().items())

    cfg["model"]["overrides"] = {"dropout": 0.0, "n_layers": 2}
    with pytest.raises(ConfigError, match="model.init_from: .* use the same preset and overrides"):
        Trainer(TrainConfig.from_dict(cfg))


def _layer_ctc(trainer: Trainer, manifest: Path, layer: int) -> float:
    """CTC of block ``layer`` (1-based) through the CTC head, eval mode, all utterances in one batch."""
    import torch.nn.functional as F

    from asrkd.data import collate

    utts = read_manifest(manifest)
    items = [trainer.parts.data.dataset[i] for i in range(len(utts))]
    batch = collate(items)
    trainer.model.eval()
    with torch.no_grad():
        feats, feat_lens = trainer.parts.frontend(batch["wavs"], batch["wav_lens"])
        _, out_lens, hidden = trainer.model(feats, feat_lens, return_hidden=True)
        lp = F.log_softmax(trainer.model.ctc_head(hidden[layer - 1]), dim=-1)
        return float(F.ctc_loss(lp.transpose(0, 1), batch["targets"].clamp(min=0), out_lens,
                                batch["target_lens"], reduction="sum", zero_infinity=True)) / len(items)


def test_intermediate_ctc_mixes_the_losses_and_trains_the_lower_block(ten_utts, tmp_path):
    import torch.nn.functional as F

    from asrkd.data import collate

    cfg = TrainConfig.from_dict(tiny_config(ten_utts, tmp_path / "inter", optim={"max_steps": 60},
                                            model={"interctc_layers": [1, 2], "interctc_weight": 0.4}))
    trainer = Trainer(cfg)
    # The loss is (1 - w) CTC(output) + w mean(CTC(block 1), CTC(block 2)), all through one head.
    batch = collate([trainer.parts.data.dataset[i] for i in range(4)])
    trainer.model.eval()
    feats, feat_lens = trainer.parts.frontend(batch["wavs"], batch["wav_lens"])
    log_probs, out_lens, hidden = out = trainer.model(feats, feat_lens, return_hidden=True)
    loss, terms = trainer.parts.loss(out, batch)

    def ctc(lp):
        lp = lp.detach()
        return float(F.ctc_loss(lp.transpose(0, 1), batch["targets"].clamp(min=0), out_lens,
                                batch["target_lens"], reduction="sum", zero_infinity=True)) / 4

    inter = [ctc(F.log_softmax(trainer.model.ctc_head(h), dim=-1)) for h in hidden[:2]]
    assert terms["ctc"] == pytest.approx(ctc(log_probs), rel=1e-5)
    assert terms["interctc"] == pytest.approx(sum(inter) / 2, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(0.6 * terms["ctc"] + 0.4 * terms["interctc"], rel=1e-5)
    # No weights are added: checkpoints and exported graphs are those of the plain model.
    plain = Trainer(TrainConfig.from_dict(tiny_config(ten_utts, tmp_path / "plain", optim={"max_steps": 60})))
    assert trainer.model.state_dict().keys() == plain.model.state_dict().keys()
    # Trained with it, block 1's own CTC loss ends far lower than when only the output is trained.
    trainer.model.train()
    trainer.fit()
    plain.fit()
    assert "interctc" in read_log(tmp_path / "inter")[-1]
    with_inter, without = _layer_ctc(trainer, ten_utts, 1), _layer_ctc(plain, ten_utts, 1)
    assert with_inter < 0.5 * without, (with_inter, without)


@pytest.mark.parametrize(
    "model, message",
    [
        ({"interctc_layers": [3]}, r"model.interctc_layers \[3\]: blocks are 1..3, and block 3 is the model's output"),
        ({"interctc_layers": [0]}, r"model.interctc_layers: \[0\] is out of range \(allowed: a list of whole numbers >= 1\)"),
        ({"interctc_layers": [1, 1]}, r"model.interctc_layers: \[1, 1\] has a block twice"),
        ({"interctc_layers": [1], "interctc_weight": 1.0},
         r"model.interctc_weight: 1.0 is out of range \(allowed: a number in \(0, 1\)\)"),
    ],
)
def test_bad_intermediate_ctc_settings_are_refused(ten_utts, tmp_path, model, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(TrainConfig.from_dict(tiny_config(ten_utts, tmp_path / "run", model=model)))


def _plain_loop(manifest: Path, out_dir: Path, max_steps: int):
    """A TrainingLoop over parts made by hand: a list of batches as the data, CTCLoss, AdamW."""
    from asrkd.data import AudioDataset, collate
    from asrkd.features import FrontendConfig, LogMel
    from asrkd.loop import TrainingLoop
    from asrkd.losses import CTCLoss
    from asrkd.models.conformer import ConformerCTC, build_preset
    from asrkd.text import CharTokenizer

    utts = read_manifest(manifest)
    tok = CharTokenizer.from_texts(u.text for u in utts)
    dataset = AudioDataset(utts, tokenizer=tok)
    batches = [collate([dataset[i] for i in range(j, j + 4)]) for j in (0, 4)]  # an epoch of 2 batches
    torch.manual_seed(0)
    model = ConformerCTC(build_preset("student-xs", vocab_size=tok.vocab_size, dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    return TrainingLoop(model, LogMel(FrontendConfig()), batches, optimizer, CTCLoss(), tokenizer=tok,
                        out_dir=out_dir, max_steps=max_steps, checkpoint_every=1, log_every=1, progress=False)


def test_the_loop_takes_its_parts_and_a_plain_iterable_resumes_mid_epoch(ten_utts, tmp_path):
    _plain_loop(ten_utts, tmp_path / "straight", 6).fit()
    expected = {int(r["step"]): r["loss"] for r in read_log(tmp_path / "straight") if "loss" in r}
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]
    assert [int(r["epoch"]) for r in read_log(tmp_path / "straight") if "loss" in r] == [0, 0, 1, 1, 2, 2]

    killed = _plain_loop(ten_utts, tmp_path / "killed", 6)
    train_step = killed.train_step

    def dies_at_step_4(batch):  # step 3 (the first batch of epoch 1) is saved, then the run dies
        if killed.pos.step == 3:
            raise KeyboardInterrupt
        return train_step(batch)

    killed.train_step = dies_at_step_4
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    resumed = _plain_loop(ten_utts, tmp_path / "killed", 6)
    assert resumed.resume() and (resumed.pos.step, resumed.pos.epoch, resumed.pos.batch_in_epoch) == (3, 1, 1)
    resumed.fit()
    got = {int(r["step"]): r["loss"] for r in read_log(tmp_path / "killed") if "loss" in r}
    assert got == pytest.approx(expected, rel=1e-6)


def test_run_out_dir_is_a_new_folder_or_an_earlier_run(ten_utts, tmp_path):
    # Checked before anything is written: a file, or a folder of the user's own files, is refused.
    (tmp_path / "notes.txt").write_text("mine")
    for out, message in ((tmp_path / "notes.txt", "is a file"), (tmp_path, "is not an asrkd run folder but holds")):
        with pytest.raises(ConfigError, match=f"run.out_dir: {out} {message}"):
            Trainer(TrainConfig.from_dict(tiny_config(ten_utts, out)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "run").mkdir()  # an empty folder, or an earlier run's (here: with its config.yaml)
    Trainer(TrainConfig.from_dict(tiny_config(ten_utts, tmp_path / "run")))
    (tmp_path / "run" / "config.yaml").write_text("{}")
    (tmp_path / "run" / "notes.txt").write_text("mine")
    Trainer(TrainConfig.from_dict(tiny_config(ten_utts, tmp_path / "run")))


def test_plain_training_names_a_line_without_text_before_starting(ten_utts, tmp_path):
    lines = ten_utts.read_text().splitlines()
    unlabelled = json.loads(lines[3])
    del unlabelled["text"]
    manifest = ten_utts.with_name("one_unlabelled.jsonl")  # beside the audio its relative paths name
    manifest.write_text("\n".join([*lines[:3], json.dumps(unlabelled), *lines[4:]]) + "\n")
    with pytest.raises(ManifestError, match=rf"^{manifest}:4: no 'text' \(1 of 10 line\(s\) have none\)"):
        Trainer(TrainConfig.from_dict(tiny_config(manifest, tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_a_dev_set_without_reference_text_is_refused_before_starting(ten_utts, tmp_path):
    lines = [json.loads(line) for line in ten_utts.read_text().splitlines()[:2]]
    dev = ten_utts.with_name("dev_without_text.jsonl")  # beside the audio its relative paths name
    dev.write_text("".join(json.dumps({**line, "text": ""}) + "\n" for line in lines))
    config = tiny_config(ten_utts, tmp_path / "run")
    config["data"]["dev"] = str(dev)
    with pytest.raises(ManifestError, match=f"^{dev}: no line has a reference text to score the dev WER against"):
        Trainer(TrainConfig.from_dict(config))
    assert not (tmp_path / "run").exists()


def test_epoch_checkpoints_are_kept_and_averaged_at_the_end_and_by_the_cli(ten_utts, tmp_path, capsys):
    cfg = tiny_config(ten_utts, tmp_path / "run", data={"dev": str(ten_utts), "max_batch_seconds": 8.0},
                      optim={"max_steps": None, "epochs": 4},
                      run={"keep_epochs": 3, "average": {"epochs": 2, "by": "last"}})
    trainer = Trainer(TrainConfig.from_dict(cfg))
    returned = trainer.fit()
    ckpts = tmp_path / "run" / "checkpoints"
    epochs = list_epoch_checkpoints(ckpts)
    assert [p.name for p in epochs] == ["epoch-002", "epoch-003", "epoch-004"]  # pruned to keep_epochs
    assert not any((p / "trainer_state.pt").exists() for p in epochs)  # for inference, not resuming
    # the last epoch's weights are the last step's: keeping them does not touch training
    last_step = list_step_checkpoints(ckpts)[-1]
    kept, stepped = (load_file(str(p / "model.safetensors")) for p in (epochs[-1], last_step))
    assert kept.keys() == stepped.keys()
    assert all(torch.equal(v, stepped[k]) for k, v in kept.items())

    avg = ckpts / "avg"
    assert returned == avg and resolve_checkpoint(tmp_path / "run") == avg
    a, b, got = (load_file(str(p / "model.safetensors")) for p in (epochs[1], epochs[2], avg))
    for key, value in got.items():
        if value.is_floating_point():
            assert torch.allclose(value, (a[key] + b[key]) / 2, atol=1e-6), key
        else:
            assert torch.equal(value, b[key]), key  # a batch norm's counter: the last one's
    assert not all(torch.equal(a[k], b[k]) for k in a)  # the two epochs differ: the mean is not a copy
    config = json.loads((avg / "config.json").read_text())
    assert config["averaged_from"] == ["epoch-003", "epoch-004"]
    loaded = load_checkpoint(avg)
    expected = evaluate(loaded.model, loaded.frontend, loaded.tokenizer, read_manifest(ten_utts))
    assert config["metrics"]["dev_wer"] == pytest.approx(expected["wer"])  # scored on the dev set
    assert f"averaged 2 epoch checkpoints (last: epoch-003, epoch-004) into {avg}" in capsys.readouterr().out
    # resuming the finished run averages again, to the same weights; the command names the average
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert cli_main(["train", "--config", str(tmp_path / "run.yaml"), "--resume"]) == 0
    assert f"averaged checkpoint: {avg}" in capsys.readouterr().out
    assert all(torch.equal(v, got[k]) for k, v in load_file(str(avg / "model.safetensors")).items())

    # `asrkd average` after the fact: the two with the lowest dev WER (a tie: the later epoch)
    wers = {p.name: json.loads((p / "config.json").read_text())["metrics"]["dev_wer"] for p in epochs}
    best_two = sorted(sorted(wers, reverse=True), key=lambda name: wers[name])[:2]
    assert cli_main(["average", str(tmp_path / "run"), "--epochs", "2", "--out", str(tmp_path / "best2")]) == 0
    assert json.loads((tmp_path / "best2" / "config.json").read_text())["averaged_from"] == sorted(best_two)
    assert cli_main(["average", str(tmp_path / "run"), "--epochs", "4", "--by", "last"]) == 2
    err = capsys.readouterr().err
    assert "4 epoch checkpoint(s) asked for, 3 epoch checkpoint(s) there" in err and "run.keep_epochs" in err
    assert "Traceback" not in err
    # training on from there (one more epoch, no averaging): the old average is moved aside, not
    # lost, and the run folder stands for its best checkpoint again
    cfg["optim"]["epochs"], cfg["run"]["average"] = 5, {"epochs": 0}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert cli_main(["train", "--config", str(tmp_path / "run.yaml"), "--resume"]) == 0
    assert not avg.exists() and (ckpts / f"avg.before-step-{last_step.name[5:]}" / "model.safetensors").is_file()
    assert resolve_checkpoint(tmp_path / "run") == ckpts / "best"
    assert [p.name for p in list_epoch_checkpoints(ckpts)] == ["epoch-003", "epoch-004", "epoch-005"]


def test_averaging_more_epochs_than_are_kept_is_refused_with_the_file(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("run:\n  keep_epochs: 2\n  average: {epochs: 3}\n")
    with pytest.raises(ConfigError, match=r"train\.yaml: run\.keep_epochs: 2 keeps fewer epoch checkpoints than "
                                          r"average\.epochs \(3\)"):
        TrainConfig.from_yaml(path)

"""`asrkd export --formats sherpa-onnx`: sherpa-onnx's own recogniser loads the model folder and
decodes test WAVs, and with the sherpa front end its transcripts are PyTorch's."""

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("sherpa_onnx")
onnx = pytest.importorskip("onnx")

from asrkd.audio import load_audio  # noqa: E402
from asrkd.decoding import greedy_decode  # noqa: E402
from asrkd.features import FrontendConfig, LogMel  # noqa: E402
from asrkd.models.conformer import ConformerConfig, ConformerCTC  # noqa: E402
from asrkd.synth import synthesize_corpus  # noqa: E402
from asrkd.text import CharTokenizer  # noqa: E402
from eval.runners import SherpaLoadError, SherpaOnnxRunner, check_sherpa_loads, open_runner  # noqa: E402
from mobile_export.formats import EXPORTERS  # noqa: E402
from mobile_export.options import ExportOptions  # noqa: E402
from mobile_export.source import ExportSource  # noqa: E402

pytestmark = pytest.mark.export
TOKENIZER = CharTokenizer.default_english()


def tiny_student(frontend: FrontendConfig) -> ExportSource:
    """A 1-layer Conformer with fixed (seeded) weights. Its CTC head is scaled up so that the
    argmax changes often along an utterance: a transcript then depends on every frame's features,
    and any difference between sherpa's features and the front end's shows up in it."""
    torch.manual_seed(0)
    model = ConformerCTC(ConformerConfig(vocab_size=TOKENIZER.vocab_size, d_model=32, n_layers=1, n_heads=2))
    with torch.no_grad():
        model.ctc_head.weight.mul_(8.0)
    return ExportSource.of((LogMel(frontend), model.eval(), TOKENIZER))


def pytorch_transcript(source: ExportSource, pcm: np.ndarray) -> str:
    """asrkd's greedy transcript over the output frames sherpa-onnx reads: it decodes
    ``feature_frames // subsampling`` of them (mobile_export/sherpa_onnx.py)."""
    with torch.no_grad():
        log_probs, _ = source.graph(torch.from_numpy(pcm)[None], torch.tensor([len(pcm)]))[:2]
    frames = source.contract.feature_frames(len(pcm)) // source.contract.subsampling
    ids = greedy_decode(log_probs[:, :frames].numpy(), np.array([frames]), blank=TOKENIZER.blank_id)[0]
    return TOKENIZER.decode(ids)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> list[np.ndarray]:
    out = tmp_path_factory.mktemp("corpus")
    manifest = synthesize_corpus("digits", 6, out, seed=3, voice_set="test", workers=1, progress=False)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    return [load_audio(out / line["audio_filepath"]) for line in lines]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    source = tiny_student(FrontendConfig.preset("sherpa"))
    out = tmp_path_factory.mktemp("bundle")
    made = EXPORTERS["sherpa-onnx"].convert(source, out, ["fp32", "int8"], ExportOptions())
    return source, out, made


def test_folder_is_laid_out_like_sherpa_onnx_model_folders(exported):
    _, out, made = exported
    assert sorted(p.name for p in (out / "sherpa-onnx").iterdir()) == ["model.int8.onnx", "model.onnx", "tokens.txt"]
    assert made["fp32"].path == out / "sherpa-onnx" / "model.onnx"
    assert (out / "sherpa-onnx" / "tokens.txt").read_text().splitlines()[0] == "<blk> 0"
    assert made["fp32"].checks["loader"] == "sherpa_onnx.OfflineRecognizer.from_nemo_ctc"
    assert made["fp32"].checks["frontend_matches_sherpa"] is True


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_model_is_in_the_nemo_ctc_contract(exported, precision):
    source, _, made = exported
    model = onnx.load(str(made[precision].path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["vocab_size"] == str(TOKENIZER.vocab_size)
    assert meta["subsampling_factor"] == str(source.contract.subsampling)
    assert meta["normalize_type"] == "per_feature"
    assert meta["model_type"] == "EncDecCTCModelBPE"
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == ["audio_signal", "length"]
    assert inputs["audio_signal"].elem_type == onnx.TensorProto.FLOAT
    assert inputs["audio_signal"].shape.dim[1].dim_value == 80
    assert inputs["length"].elem_type == onnx.TensorProto.INT64
    assert model.graph.output[0].name == "log_probs"


def test_sherpa_transcripts_equal_pytorch_with_the_sherpa_front_end(exported, wavs):
    source, _, made = exported
    runner = open_runner("sherpa-onnx", made["fp32"].path)
    for pcm in wavs:
        assert runner.run(pcm) is None
        assert runner.last_text, "the fixed-weight student emits tokens on every utterance"
        assert runner.last_text == pytorch_transcript(source, pcm)
        # Timestamps: one output frame is hop * subsampling samples (40 ms here).
        shift = source.contract.output_frame_shift
        assert all(abs(t / shift - round(t / shift)) < 1e-4 for t in runner.last_timestamps)


def test_int8_model_decodes(exported, wavs):
    _, _, made = exported
    runner = SherpaOnnxRunner(made["int8"].path)
    texts = []
    for pcm in wavs:
        runner.run(pcm)
        texts.append(runner.last_text)
    assert all(texts)


def test_another_front_end_changes_transcripts_and_says_why(tmp_path, wavs):
    """The same weights trained on asrkd's default front end: sherpa still decodes, but its own
    features change transcripts (what the report's agreement and note show)."""
    source = tiny_student(FrontendConfig())
    made = EXPORTERS["sherpa-onnx"].convert(source, tmp_path, ["fp32"], ExportOptions())["fp32"]
    assert made.checks["frontend_matches_sherpa"] is False
    assert "front-end mismatch" in made.checks["frontend_note"]
    runner = SherpaOnnxRunner(made.path)
    differ = 0
    for pcm in wavs:
        runner.run(pcm)
        differ += runner.last_text != pytorch_transcript(source, pcm)
    assert differ >= 1


def test_a_model_sherpa_cannot_load_is_an_error_not_a_dead_process(exported, tmp_path):
    _, out, _ = exported
    broken = tmp_path / "sherpa-onnx"
    shutil.copytree(out / "sherpa-onnx", broken)
    model = onnx.load(str(broken / "model.onnx"))
    kept = [p for p in model.metadata_props if p.key != "vocab_size"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(broken / "model.onnx"))

    with pytest.raises(SherpaLoadError, match="vocab_size"):
        SherpaOnnxRunner(broken / "model.onnx")  # checked before sherpa sees it
    with pytest.raises(SherpaLoadError, match="could not load it"):
        check_sherpa_loads(broken / "model.onnx")  # sherpa's own exit, in a subprocess
    (broken / "tokens.txt").unlink()
    with pytest.raises(SherpaLoadError, match="tokens.txt"):
        SherpaOnnxRunner(broken / "model.int8.onnx")

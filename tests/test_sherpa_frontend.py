"""`FrontendConfig.preset("sherpa")` against the features sherpa-onnx itself computes.

sherpa-onnx has no API that returns its features, so a probe model reads them back: it is a NeMo
CTC model whose "log-probs" spell one feature band's values as tokens. For band ``d`` it computes
``u = floor(x * 2^18) + 2^23`` per frame, takes the high or the low 12 bits of ``u`` and emits token
``1 + 2 * bits + (t mod 2)`` (the parity keeps consecutive frames from collapsing in CTC's greedy
search). ``OfflineRecognizer.from_nemo_ctc`` decodes it, and the tokens give the features back
at a resolution of 2^-18 (3.8e-6), two recognisers per band.
"""

import numpy as np
import pytest
import torch

sherpa_onnx = pytest.importorskip("sherpa_onnx")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from asrkd.audio import load_audio  # noqa: E402
from asrkd.contract import SAMPLE_RATE  # noqa: E402
from asrkd.features import FrontendConfig, LogMel  # noqa: E402
from asrkd.synth import synthesize_corpus  # noqa: E402

pytestmark = pytest.mark.export
SCALE_BITS, PART_BITS, OFFSET = 18, 12, 1 << 23
VOCAB = 1 + 2 * (1 << PART_BITS)


def probe_model(path, band: int, high: bool, n_mels: int) -> None:
    """The probe for the high or low 12 bits of band ``band`` (module docstring)."""

    def scalar(name, value, dtype=TensorProto.FLOAT):
        return helper.make_tensor(name, dtype, [], [value])

    nodes = [
        helper.make_node("Gather", ["audio_signal", "band"], ["x"], axis=1),  # [1, T]
        helper.make_node("Mul", ["x", "scale"], ["scaled"]),
        helper.make_node("Floor", ["scaled"], ["q"]),
        helper.make_node("Add", ["q", "offset"], ["u"]),
        helper.make_node("Div", ["u", "part"], ["u_part"]),
        helper.make_node("Floor", ["u_part"], ["hi"]),
        helper.make_node("Mul", ["hi", "part"], ["hi_scaled"]),
        helper.make_node("Sub", ["u", "hi_scaled"], ["lo"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one_i"], ["frames"], axis=0),
        helper.make_node("Range", ["zero_i", "frames", "one_i"], ["t"]),
        helper.make_node("Mod", ["t", "two_i"], ["parity_i"]),
        helper.make_node("Cast", ["parity_i"], ["parity"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["hi" if high else "lo", "two"], ["doubled"]),
        helper.make_node("Add", ["doubled", "parity"], ["token_0"]),
        helper.make_node("Add", ["token_0", "one"], ["token_f"]),
        helper.make_node("Cast", ["token_f"], ["token"], to=TensorProto.INT64),
        helper.make_node("OneHot", ["token", "vocab", "on_off"], ["log_probs"], axis=-1),
    ]
    constants = [
        helper.make_tensor("band", TensorProto.INT64, [], [band]),
        scalar("scale", float(1 << SCALE_BITS)), scalar("offset", float(OFFSET)),
        scalar("part", float(1 << PART_BITS)), scalar("two", 2.0), scalar("one", 1.0),
        scalar("one_i", 1, TensorProto.INT64), scalar("zero_i", 0, TensorProto.INT64),
        scalar("two_i", 2, TensorProto.INT64), scalar("vocab", VOCAB, TensorProto.INT64),
        helper.make_tensor("on_off", TensorProto.FLOAT, [2], [-100.0, 0.0]),
    ]
    graph = helper.make_graph(
        nodes, "probe",
        [helper.make_tensor_value_info("audio_signal", TensorProto.FLOAT, [1, n_mels, "T"]),
         helper.make_tensor_value_info("length", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, [1, "T", VOCAB])],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"vocab_size": VOCAB, "subsampling_factor": 1, "normalize_type": "per_feature"}.items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.save(model, str(path))


def sherpa_features(pcm: np.ndarray, folder, n_mels: int = 80) -> np.ndarray:
    """``[T, n_mels]``: the normalised features sherpa-onnx's NeMo CTC path feeds its model."""
    tokens = folder / "tokens.txt"
    if not tokens.exists():
        tokens.write_text("<blk> 0\n" + "".join(f"t{i} {i}\n" for i in range(1, VOCAB)))
    halves = []
    for high in (True, False):
        bands = []
        for band in range(n_mels):
            path = folder / f"probe_{band}_{int(high)}.onnx"
            if not path.exists():
                probe_model(path, band, high, n_mels)
            recognizer = sherpa_onnx.OfflineRecognizer.from_nemo_ctc(model=str(path), tokens=str(tokens))
            stream = recognizer.create_stream()
            stream.accept_waveform(SAMPLE_RATE, pcm)
            recognizer.decode_stream(stream)
            bands.append([(int(t[1:]) - 1) // 2 for t in stream.result.tokens])
        halves.append(np.array(bands, dtype=np.int64))
    u = halves[0] * (1 << PART_BITS) + halves[1]
    return ((u - OFFSET) / float(1 << SCALE_BITS)).T


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("probe")


def asrkd_features(pcm: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        feats, lengths = LogMel(FrontendConfig.preset("sherpa"))(torch.from_numpy(pcm)[None], torch.tensor([len(pcm)]))
    return feats[0, : int(lengths[0])].numpy()


def test_sherpa_preset_reproduces_sherpa_onnx_features_on_synthetic_speech(probe_dir, tmp_path):
    manifest = synthesize_corpus("digits", 1, tmp_path, seed=3, voice_set="test", workers=1, progress=False)
    pcm = load_audio(tmp_path / "wavs" / "digits-test-s3-000000.wav")
    ours, theirs = asrkd_features(pcm), sherpa_features(pcm, probe_dir)
    assert manifest.exists() and ours.shape == theirs.shape == ((len(pcm) + 80) // 160, 80)
    # Measured: 3.2e-5 (fp32 rounding of two different FFTs; the probe resolves 3.8e-6).
    assert np.abs(ours - theirs).max() < 2e-4


def test_sherpa_preset_reproduces_sherpa_onnx_features_on_real_speech(probe_dir, fsdd_dir):
    pcm = load_audio(fsdd_dir / "audio" / "fsdd" / "george" / "4_george_3.wav")  # 8 kHz, resampled
    ours, theirs = asrkd_features(pcm), sherpa_features(pcm, probe_dir)
    assert ours.shape == theirs.shape
    # Measured: 4.9e-4, in the bands above 4 kHz, which hold only the resampler's rounding noise:
    # each FFT rounds it differently, and normalisation by its tiny std magnifies that.
    assert np.abs(ours[:, :60] - theirs[:, :60]).max() < 2e-4
    assert np.abs(ours - theirs).max() < 2e-3

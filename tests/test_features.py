import json
import math

import librosa
import numpy as np
import pytest
import torch

from asrkd.audio import load_audio
from asrkd.contract import SAMPLE_RATE
from asrkd.features import DEFAULT_LOG_FLOOR, FrontendConfig, LogMel, vtlp_mel_filterbank, vtlp_warp

RNG = np.random.default_rng(0)


def librosa_log_mel(wav: np.ndarray, log_floor: float = DEFAULT_LOG_FLOOR) -> np.ndarray:
    """The reference: librosa's mel power spectrogram, then the same floored log. [T, 80]."""
    mel = librosa.feature.melspectrogram(
        y=wav, sr=16000, n_fft=400, hop_length=160, win_length=400, n_mels=80,
        power=2.0, center=True, pad_mode="constant",
    )  # fmt: skip
    return np.log(np.maximum(mel, log_floor)).T


def log_mel(module: LogMel, wav: np.ndarray) -> np.ndarray:
    """One utterance through the module, as [T, n_mels] numpy."""
    with torch.no_grad():
        feats, frame_lengths = module(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
    assert frame_lengths.tolist() == [feats.shape[1]]
    return feats[0].numpy()


@pytest.fixture(scope="module")
def unnormalized() -> LogMel:
    return LogMel(FrontendConfig(normalize="none"))


def test_matches_librosa_on_real_speech(fsdd_dir, unnormalized):
    files = sorted((fsdd_dir / "audio" / "fsdd_connected").glob("*/*_000.wav"))
    # Its lowest mel band sits ~70 dB below the rest (the microphone cuts DC): the case where a
    # floor below the fp32 rounding noise of the DFT would break agreement.
    files.append(fsdd_dir / "audio" / "fsdd" / "george" / "4_george_3.wav")
    assert len(files) == 5
    for path in files:
        wav = load_audio(path)  # 8 kHz recordings: nothing above 4 kHz after resampling
        ours, ref = log_mel(unnormalized, wav), librosa_log_mel(wav)
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() <= 1e-3, path.name


def _synthetic() -> dict[str, np.ndarray]:
    sr, n = SAMPLE_RATE, 2 * SAMPLE_RATE
    t = np.arange(n) / sr
    return {
        "loud_sweep": 0.8 * librosa.chirp(fmin=50, fmax=7900, sr=sr, duration=2.0),
        "low_tone": 0.9 * np.sin(2 * np.pi * 100 * t),
        "white_noise": 0.1 * RNG.standard_normal(n),
        "tone_silence_hiss": np.concatenate(
            [
                0.5 * np.sin(2 * np.pi * 1000 * t[: n // 2]),
                np.zeros(n // 4),
                1e-3 * RNG.standard_normal(n // 4),
            ]
        ),
        "clicks": (np.arange(n) % 4000 == 0).astype(np.float64),
        "odd_length": 0.3 * RNG.standard_normal(12345),
    }


@pytest.mark.parametrize("name, wav", list(_synthetic().items()), ids=list(_synthetic()))
def test_matches_librosa_on_synthetic_signals(unnormalized, name, wav):
    wav = wav.astype(np.float32)
    ours, ref = log_mel(unnormalized, wav), librosa_log_mel(wav)
    assert ours.shape == ref.shape == (1 + len(wav) // 160, 80)
    assert np.abs(ours - ref).max() <= 1e-3


def test_matches_librosa_with_a_window_shorter_than_the_fft():
    config = FrontendConfig(n_fft=512, win_length=400, n_mels=64, f_min=20.0, normalize="none")
    wav = (0.3 * RNG.standard_normal(SAMPLE_RATE)).astype(np.float32)
    mel = librosa.feature.melspectrogram(
        y=wav, sr=16000, n_fft=512, hop_length=160, win_length=400, n_mels=64, fmin=20.0,
        power=2.0, center=True, pad_mode="constant",
    )  # fmt: skip
    ref = np.log(np.maximum(mel, config.log_floor)).T
    assert np.abs(log_mel(LogMel(config), wav) - ref).max() <= 1e-3


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-5), (torch.float32, 1e-3)])
@pytest.mark.parametrize("normalize, level, preset", [("none", "none", None), ("per_feature", "none", None),
                                                   ("per_feature", "rms", None), (None, "none", "sherpa")])
def test_padded_batch_equals_each_utterance_alone(normalize, level, preset, dtype, atol):
    # float64 shows that nothing of the padding or of the batch mates reaches an utterance. In
    # float32 the CPU conv kernels for a batch of one and for larger batches (oneDNN) round the
    # 400-term DFT sums differently, which moves mel cells ~50 dB below the frame's loudest band
    # by up to ~3e-5 in the log: there features agree to the 1e-3 they have against librosa.
    if preset:  # Kaldi framing mirrors each utterance at its own end, not at the batch's
        module = LogMel(FrontendConfig.preset(preset, level=level)).to(dtype)
    else:
        module = LogMel(FrontendConfig(normalize=normalize, level=level)).to(dtype)
    lengths = [16000, 9123, 4001]  # not multiples of the hop
    utterances = [
        torch.from_numpy(
            0.5 * librosa.chirp(fmin=100, fmax=6000, sr=SAMPLE_RATE, duration=n / SAMPLE_RATE)
            + 0.05 * RNG.standard_normal(n)
        ).to(dtype)
        for n in lengths
    ]
    # Padding holds loud garbage, even NaN: none of it may leak into the features.
    batch = 3.0 * torch.from_numpy(RNG.standard_normal((3, max(lengths)))).to(dtype)
    batch[2, -1] = float("nan")
    for row, wav in enumerate(utterances):
        batch[row, : len(wav)] = wav

    with torch.no_grad():
        feats, frame_lengths = module(batch, torch.tensor(lengths))
        alone = [module(wav[None], torch.tensor([len(wav)]))[0][0] for wav in utterances]

    assert feats.dtype == dtype
    assert frame_lengths.tolist() == [module.config.num_frames(n) for n in lengths]
    for row, t in enumerate(frame_lengths.tolist()):
        assert alone[row].shape[0] == t
        torch.testing.assert_close(feats[row, :t], alone[row], rtol=0, atol=atol)
        assert (feats[row, t:] == 0).all()


def test_per_feature_normalization_uses_valid_frames_only():
    module = LogMel()  # normalize="per_feature" by default
    wav = torch.randn(2, 8000) * torch.linspace(0.01, 1.0, 8000)  # level changes over time
    with torch.no_grad():
        feats, frame_lengths = module(wav, torch.tensor([8000, 3000]))
    for row, t in enumerate(frame_lengths.tolist()):
        valid = feats[row, :t].double()
        assert valid.mean(dim=0).abs().max() < 1e-5
        assert (valid.std(dim=0) - 1).abs().max() < 1e-3  # unbiased std, + 1e-5 as in NeMo


def _quiet_speechlike(n: int = 16000) -> torch.Tensor:
    """Voiced bursts with weak noise between them, as a word with fricatives and pauses."""
    t = torch.arange(n) / SAMPLE_RATE
    bursts = (torch.sin(2 * torch.pi * 2.5 * t) > 0).float()
    voiced = 0.3 * torch.sin(2 * torch.pi * 150 * t) * bursts
    return voiced + 0.003 * torch.from_numpy(RNG.standard_normal(n)).float()


def test_level_rms_makes_features_independent_of_the_recording_level():
    wav = _quiet_speechlike()
    lengths = torch.tensor([len(wav)])
    levelled, plain = LogMel(FrontendConfig(level="rms")), LogMel()
    with torch.no_grad():
        for gain_db in (-30.0, -10.0, 6.0):
            louder = wav * 10 ** (gain_db / 20)
            # Per-feature normalisation alone: the quiet copy's weak parts sink into the log floor.
            assert (plain(louder[None], lengths)[0] - plain(wav[None], lengths)[0]).abs().max() > 0.1
            torch.testing.assert_close(levelled(louder[None], lengths)[0], levelled(wav[None], lengths)[0],
                                       rtol=0, atol=1e-3)


def test_level_gain_is_capped_so_near_silence_stays_quiet():
    module = LogMel(FrontendConfig(level="rms", normalize="none"))
    hiss = 1e-5 * torch.from_numpy(RNG.standard_normal(16000)).float()  # -100 dBFS
    lengths = torch.tensor([16000])
    with torch.no_grad():
        feats = module(hiss[None], lengths)[0]
        speech = module(_quiet_speechlike()[None], lengths)[0]
    # At most +40 dB: the hiss ends near -60 dBFS, a little above the log floor (about -66 dBFS
    # for white noise), not at the -20 dBFS of levelled speech.
    assert feats.mean() < math.log(module.config.log_floor) + 2.0
    assert feats.max() < speech.max() - 5.0


@pytest.mark.filterwarnings("ignore:n_fft=400 is too large")
@pytest.mark.parametrize("num_samples", [1, 159, 160, 400, 401, 16000, 16159, 16160])
def test_frame_count_formula_matches_librosa(num_samples):
    config = FrontendConfig()
    assert config.num_frames(num_samples) == 1 + num_samples // config.hop_length
    stft = librosa.stft(
        np.zeros(num_samples, np.float32), n_fft=400, hop_length=160, pad_mode="constant"
    )
    assert stft.shape[1] == config.num_frames(num_samples)


def test_without_centering_frames_start_at_sample_zero():
    config = FrontendConfig(center=False, normalize="none")
    module = LogMel(config)
    wav = torch.randn(3, 4000)
    with torch.no_grad():
        feats, frame_lengths = module(wav, torch.tensor([4000, 1000, 399]))
    assert feats.shape == (3, config.num_frames(4000), 80) == (3, 23, 80)
    assert frame_lengths.tolist() == [23, 4, 0]
    assert (feats[2] == 0).all()
    ref = librosa.feature.melspectrogram(
        y=wav[0].numpy(), sr=16000, n_fft=400, hop_length=160, n_mels=80, center=False
    )
    assert np.abs(feats[0].numpy() - np.log(np.maximum(ref, config.log_floor)).T).max() <= 1e-3


@pytest.mark.parametrize("config", [FrontendConfig(), FrontendConfig.preset("sherpa")], ids=["default", "sherpa"])
def test_exports_with_dynamic_batch_and_time(config):
    module = LogMel(config).eval()
    dynamic = torch.export.Dim.DYNAMIC
    program = torch.export.export(
        module,
        (torch.randn(2, 16000), torch.tensor([16000, 9000])),
        dynamic_shapes={"wav": {0: dynamic, 1: dynamic}, "lengths": {0: dynamic}},
    )
    for batch, samples in [(3, 23456), (1, 4000)]:
        wav, lengths = torch.randn(batch, samples), torch.randint(400, samples + 1, (batch,))
        exported, expected = program.module()(wav, lengths), module(wav, lengths)
        assert exported[0].shape == (batch, config.num_frames(samples), 80)
        torch.testing.assert_close(exported[0], expected[0], rtol=0, atol=1e-5)
        assert torch.equal(exported[1], expected[1])


def test_config_round_trips_through_json():
    config = FrontendConfig(n_mels=64, f_min=20.0, f_max=7600.0, normalize="none")
    restored = FrontendConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert FrontendConfig().frame_shift_seconds == 0.01
    assert FrontendConfig().sample_rate == SAMPLE_RATE


def test_filterbank_and_dft_basis_come_from_the_config_not_the_state_dict():
    assert LogMel().state_dict() == {}  # a checkpoint stores FrontendConfig instead


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"win_length": 512}, r"win_length \(512\) must be <= n_fft \(400\)"),
        ({"normalize": "global"}, "normalize must be one of"),
        ({"hop_length": 0}, "hop_length must be a positive int"),
        ({"f_max": 9000.0}, "f_max <= sample_rate / 2"),
        ({"log_floor": 0.0}, "log_floor must be > 0"),
        ({"level": "peak"}, "level must be one of"),
        ({"level_dbfs": 3.0}, "level_dbfs must be <= 0 dBFS"),
        ({"framing": "htk"}, "framing must be one of"),
        ({"preemphasis": 1.0}, r"preemphasis must be in \[0, 1\)"),
        ({"log_floor_mode": "clamp"}, "log_floor_mode must be one of"),
    ],
)
def test_invalid_config_is_rejected_with_the_field_named(bad, message):
    with pytest.raises(ValueError, match=message):
        FrontendConfig(**bad)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown FrontendConfig field\(s\) \['n_mel'\]"):
        FrontendConfig.from_dict({"n_mel": 80})


def test_too_many_mel_bands_for_the_fft_size_is_an_error():
    with pytest.raises(ValueError, match="cover no FFT bin"):
        LogMel(FrontendConfig(n_fft=64, win_length=64, n_mels=80))


def test_vtlp_filterbank_at_alpha_one_is_the_front_ends_own():
    config = FrontendConfig()
    banks = vtlp_mel_filterbank(config, torch.tensor([1.0, 1.0]))
    assert banks.shape == (2, 80, 201)
    assert torch.allclose(banks[1], LogMel(config).mel_fb, atol=1e-7)


def test_vtlp_warp_scales_below_the_boundary_and_keeps_nyquist():
    freqs = torch.linspace(0.0, 8000.0, 801)
    warped = vtlp_warp(freqs, torch.tensor([0.9, 1.0, 1.12]), nyquist=8000.0)
    assert torch.equal(warped[1], freqs)
    assert torch.allclose(warped[:, -1], torch.tensor(8000.0))
    assert bool((warped.diff(dim=1) > 0).all())  # monotonic: no band reads a frequency twice
    low = freqs <= 5000.0  # below 0.8 * 8000 * min(alpha, 1) / alpha for both factors
    assert torch.allclose(warped[0, low], 0.9 * freqs[low], atol=1e-3)
    assert torch.allclose(warped[2, low], 1.12 * freqs[low], atol=1e-3)


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_vtlp_moves_a_tone_as_if_its_frequency_were_scaled(unnormalized, alpha):
    """A 700 Hz tone through a bank warped by alpha has its power where a plain bank puts a
    700 * alpha Hz tone (formants of a shorter or longer vocal tract), two bands from its own."""
    t = np.arange(8000) / SAMPLE_RATE

    def tone(f):
        return torch.from_numpy((0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32))[None]

    lengths = torch.tensor([8000])
    bank = vtlp_mel_filterbank(unnormalized.config, torch.tensor([alpha]))
    with torch.no_grad():
        warped, _ = unnormalized(tone(700.0), lengths, mel_fb=bank)
        scaled, _ = unnormalized(tone(700.0 * alpha), lengths)
        plain, _ = unnormalized(tone(700.0), lengths)

    def centroid(feats):  # mean band index, weighted by mel power, over the middle frames
        power = feats[0, 10:-10].exp().mean(dim=0)
        return float((power * torch.arange(len(power))).sum() / power.sum())

    assert centroid(warped) == pytest.approx(centroid(scaled), abs=0.01)
    assert abs(centroid(warped) - centroid(plain)) > 1.5  # 70 Hz is about two bands here


def kaldi_log_mel(wav: np.ndarray, preemphasis: float = 0.97) -> np.ndarray:
    """The reference of the sherpa preset in float64 numpy, written the way kaldi-native-fbank
    computes it: frame t = the 400 samples around t * 160 + 80, mirrored at the ends; pre-emphasis
    inside the frame; periodic Hann; zero-padded to 512 points; Slaney mel; log(mel + 2^-24);
    (x - mean) / (population std + 1e-5) per band. [T, 80]."""
    n, hop, win = len(wav), 160, 400
    starts = np.arange((n + hop // 2) // hop) * hop + hop // 2 - win // 2
    index = starts[:, None] + np.arange(win)[None, :]
    index = np.where(index < 0, -index - 1, index)
    index = np.where(index >= n, 2 * n - 1 - index, index)
    frames = wav.astype(np.float64)[index]
    emphasised = frames.copy()
    emphasised[:, 1:] -= preemphasis * frames[:, :-1]
    emphasised[:, 0] *= 1 - preemphasis
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    power = np.abs(np.fft.rfft(emphasised * window, n=512)) ** 2
    fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=512, n_mels=80, fmin=0.0, fmax=8000.0, norm="slaney")
    logmel = np.log(power @ fb.T + 2.0**-24)
    return (logmel - logmel.mean(0)) / (logmel.std(0) + 1e-5)


@pytest.mark.parametrize("num_samples", [16000, 12345, 4001, 400])
def test_sherpa_preset_matches_a_kaldi_style_reference(num_samples):
    """What tests/test_sherpa_frontend.py checks against sherpa-onnx itself, without it."""
    t = np.arange(num_samples) / SAMPLE_RATE
    wav = (0.4 * np.sin(2 * np.pi * 300 * t) * np.sin(2 * np.pi * 3 * t)
           + 0.02 * RNG.standard_normal(num_samples)).astype(np.float32)
    ours = log_mel(LogMel(FrontendConfig.preset("sherpa")), wav)
    assert ours.shape == ((num_samples + 80) // 160, 80) == (FrontendConfig.preset("sherpa").num_frames(num_samples), 80)
    assert np.abs(ours - kaldi_log_mel(wav)).max() < 1e-3


def test_sherpa_preset_is_selected_by_name_and_stored_field_by_field():
    config = FrontendConfig.from_dict({"preset": "sherpa"})  # a TrainConfig's `frontend: {preset: sherpa}`
    assert config == FrontendConfig.preset("sherpa")
    assert (config.n_fft, config.win_length, config.preemphasis, config.framing) == (512, 400, 0.97, "kaldi")
    assert (config.log_floor, config.log_floor_mode, config.normalize) == (2.0**-24, "add", "per_feature_sherpa")
    assert "preset" not in config.to_dict()  # a checkpoint stores every setting, not a name
    assert FrontendConfig.from_dict(config.to_dict()) == config
    assert config.matches_preset("sherpa") and not FrontendConfig().matches_preset("sherpa")
    assert FrontendConfig.from_dict({"preset": "sherpa", "n_mels": 64}).matches_preset("sherpa")
    assert not FrontendConfig.from_dict({"preset": "sherpa", "level": "rms"}).matches_preset("sherpa")
    with pytest.raises(ValueError, match=r"unknown FrontendConfig preset 'kaldi'; known presets: \['sherpa'\]"):
        FrontendConfig.from_dict({"preset": "kaldi"})


def test_defaults_keep_the_librosa_front_end():
    """The new settings default to what the front end always computed (the demo's numbers)."""
    config = FrontendConfig()
    assert (config.preemphasis, config.framing, config.log_floor_mode) == (0.0, "librosa", "max")
    assert (config.n_fft, config.log_floor, config.normalize, config.center) == (400, DEFAULT_LOG_FLOOR, "per_feature", True)

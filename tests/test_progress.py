"""Off a terminal, progress is a log line per interval, never carriage-return redraws."""

from asrkd.progress import LineProgress, progress


def test_off_a_terminal_progress_writes_whole_lines(capsys):
    bar = progress(4, unit="step", desc="train", interval=0.0)  # pytest's captured stderr is no TTY
    assert isinstance(bar, LineProgress)
    for loss in (3.0, 2.0, 1.0, 0.5):
        bar.set_postfix(loss=f"{loss:.1f}")
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("train: 1/4 step (25 %)") and lines[0].endswith("loss=3.0")
    assert lines[-1].startswith("train: 4/4 step (100 %)")


def test_line_at_close_counts_from_the_initial_position(capsys):
    bar = progress(100, initial=40, unit="utt", desc="synth", interval=3600.0)
    for _ in range(60):
        bar.update(1)
    bar.close()
    bar.close()  # a second close writes nothing more
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("synth: 100/100 utt (100 %)")
    off = progress(10, enabled=False)
    off.update(5)
    off.close()
    assert capsys.readouterr().err == ""

"""model/progress.py: the training curve plots the objective's own train / validation values."""
import pytest

from captionbeam.model.progress import Curve, format_duration, plot_curve

pytest.importorskip("matplotlib")


def test_scst_curve_plots_dev_cider_with_the_init_model_as_epoch_zero(tmp_path):
    epochs = [{"epoch": 0, "step": 0, "val_cider": 0.45},                       # the init model: no reward
              {"epoch": 1, "step": 10, "reward": 0.50, "val_cider": 0.47},
              {"epoch": 2, "step": 20, "reward": 0.55, "val_cider": 0.46}]
    curve = Curve("captionbeam {arch}: self-critical", train_key="reward", val_key="val_cider",
                  ylabel="CIDEr-D", higher_is_better=True)
    path = plot_curve(str(tmp_path), epochs, curve, "transformer")
    data = (tmp_path / "training_curve.png").read_bytes()
    assert path.endswith("training_curve.png") and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_entries_without_the_curve_keys_are_skipped_and_no_epochs_give_no_curve(tmp_path):
    assert plot_curve(str(tmp_path), [{"epoch": 1}], Curve("t")) is not None
    assert plot_curve(str(tmp_path), [], Curve("t")) is None


def test_format_duration():
    assert format_duration(3725.9) == "1:02:05" and format_duration(-3) == "0:00:00"

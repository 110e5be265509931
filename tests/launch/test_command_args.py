"""launch.command_args: the typed config a job-calling job builds for a command (a Stage), and the command
line it prints for it, are the same thing: parsing the printed line with the command's own parser gives
the same typed config."""
import shlex

import pytest

from captionbeam.launch.command_args import CommandError, command_parser, config_record, stage
from captionbeam.launch.commands import caption, captions, evaluate, features, sample, train
from captionbeam.launch.config import RunConfig, from_mapping
from captionbeam.launch.run import RunPipeline

MODULES = {"sample": sample, "features": features, "captions": captions, "train": train, "evaluate": evaluate,
           "caption": caption}


def _reparsed(s):
    """The printed line, parsed as `captionbeam COMMAND ...` would parse it (Beam flags left over)."""
    module = MODULES[s.command]
    tokens = shlex.split(s.line)[2:]
    own = tokens[: len(tokens) - len(s.pipeline_args)] if s.pipeline_args else tokens
    return module, command_parser(module).parse_args(own)


@pytest.mark.parametrize("config", [
    RunConfig(),
    from_mapping({"train": {"arch": "attention", "extra": ["--units=32", "--dropout", "0.25"]},
                  "evaluate": {"beam_size": 3, "extra": ["--coco-metrics=bleu,cider", "--allow-missing"]},
                  "captions": {"min_count": 1, "extra": ["--keep-empty"]},
                  "runner": {"pipeline_args": ["--direct_num_workers=2"]}}),
], ids=["default", "extras"])
def test_printed_command_lines_parse_back_to_the_same_config(tmp_path, config):
    config.workdir = str(tmp_path / "w")
    pipe = RunPipeline(config, pipeline_args=list(config.runner.pipeline_args))
    stages = pipe.stages() + [pipe.caption_stage([str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")])]
    assert [s.command for s in stages] == ["sample", "features", "captions", "train", "evaluate", "caption"]
    for s in stages:
        module, parsed = _reparsed(s)
        assert module.config_from_args(parsed) == s.config, s.command
        # what a --resume marker holds: the config as JSON data, equal for equal configs
        assert s.record()["config"] == config_record(module.config_from_args(parsed)), s.command
    by_name = {s.command: s for s in stages}
    # a user's extra flags reach the typed config
    job = by_name["train"].config
    assert job.model.arch == config.train.arch and job.train.epochs == config.train.epochs
    if config.train.extra:
        assert (job.model.units, job.model.dropout) == (32, 0.25)
        ev = by_name["evaluate"].config
        assert ev.scoring.coco_metrics == ("bleu", "cider") and ev.scoring.allow_missing
        assert ev.decoding.beam_size == 3
        assert by_name["features"].pipeline_args == ("--direct_num_workers=2",)
        assert by_name["features"].line.endswith(" --direct_num_workers=2")


def test_bad_values_and_names_are_command_errors():
    with pytest.raises(CommandError, match="no such option: epoch"):
        stage(train, {"data": "d", "model_dir": "m", "epoch": 3})
    with pytest.raises(CommandError, match="--units: expected a positive integer"):
        stage(train, {"data": "d", "model_dir": "m"}, extra=["--units=0"])
    with pytest.raises(CommandError, match="unrecognized arguments: --nope"):
        stage(train, {"data": "d", "model_dir": "m"}, extra=["--nope"])

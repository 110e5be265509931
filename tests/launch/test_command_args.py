"""launch.command_args: the namespace a job-calling job builds for a command, and the command line it
prints for it, are the same thing: parsing the printed line with the command's own parser gives the
same arguments and the same typed config."""
import shlex

import pytest

from captionbeam.launch.command_args import CommandError, command_parser, invocation
from captionbeam.launch.commands import caption, captions, evaluate, features, sample, train
from captionbeam.launch.config import RunConfig, from_mapping
from captionbeam.launch.run import RunPipeline

MODULES = {"sample": sample, "features": features, "captions": captions, "train": train, "evaluate": evaluate,
           "caption": caption}


def _reparsed(inv):
    """The printed line, parsed as `captionbeam COMMAND ...` would parse it (Beam flags left over)."""
    module = MODULES[inv.command]
    tokens = shlex.split(inv.line)[2:]
    own = tokens[: len(tokens) - len(inv.pipeline_args)] if inv.pipeline_args else tokens
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
    invocations = pipe.invocations() + [pipe.caption_invocation([str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")])]
    assert [i.command for i in invocations] == ["sample", "features", "captions", "train", "evaluate", "caption"]
    for inv in invocations:
        module, parsed = _reparsed(inv)
        assert vars(parsed) == vars(inv.args), inv.command
        if hasattr(module, "config_from_args"):
            assert module.config_from_args(parsed) == module.config_from_args(inv.args), inv.command
    by_name = {i.command: i for i in invocations}
    # a user's extra flags reach the typed config
    job = train.config_from_args(by_name["train"].args)
    assert job.model.arch == config.train.arch and job.train.epochs == config.train.epochs
    if config.train.extra:
        assert (job.model.units, job.model.dropout) == (32, 0.25)
        ev = evaluate.config_from_args(by_name["evaluate"].args)
        assert ev.scoring.coco_metrics == ("bleu", "cider") and ev.scoring.allow_missing
        assert ev.decoding.beam_size == 3
        assert by_name["features"].pipeline_args == ["--direct_num_workers=2"]
        assert by_name["features"].line.endswith(" --direct_num_workers=2")


def test_bad_values_and_names_are_command_errors():
    with pytest.raises(CommandError, match="no such option: epoch"):
        invocation(train, {"data": "d", "model_dir": "m", "epoch": 3})
    with pytest.raises(CommandError, match="--units: expected a positive integer"):
        invocation(train, {"data": "d", "model_dir": "m"}, extra=["--units=0"])
    with pytest.raises(CommandError, match="unrecognized arguments: --nope"):
        invocation(train, {"data": "d", "model_dir": "m"}, extra=["--nope"])

"""A mistyped flag is an error naming it, with a suggestion, before anything runs; Beam's own
options pass through unchanged."""

import argparse

import pytest

from smartbrush.cli import main
from smartbrush.pipeline.commands.build import build_parser
from smartbrush.flags import beam_option_names, parse_job_args, suggestions


def _fails(parser, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        parse_job_args(parser, argv)
    assert e.value.code == 2
    return capsys.readouterr().err


BASE = ["--coco-annotations", "a.json", "--coco-images", "imgs", "--out", "out"]


def test_mistyped_job_flag_names_it_and_suggests(capsys):
    err = _fails(build_parser(), BASE + ["--resolutoin", "256"], capsys)
    assert "unknown flag --resolutoin; did you mean --resolution?" in err
    assert "usage: " in err  # argparse-style


def test_mistyped_beam_flag_is_refused_with_a_suggestion(capsys):
    err = _fails(build_parser(), BASE + ["--direct_num_worker", "2"], capsys)
    assert "unknown flag --direct_num_worker; did you mean --direct_num_workers" in err
    err = _fails(build_parser(), BASE + ["--runer=DirectRunner"], capsys)
    assert "unknown flag --runer; did you mean --runner" in err


def test_every_unknown_flag_is_named_and_dash_variants_are_suggested_first(capsys):
    err = _fails(build_parser(), BASE + ["--samples_per_shard", "5", "--zzzqqq"], capsys)
    assert "unknown flag --samples_per_shard; did you mean --samples-per-shard" in err
    assert "unknown flag --zzzqqq (neither a flag of this command" in err


def test_bad_value_of_a_beam_option_is_an_error(capsys):
    err = _fails(build_parser(), BASE + ["--direct_running_mode", "sideways"], capsys)
    assert "Beam pipeline option" in err and "sideways" in err


def test_real_beam_flags_pass_through_unchanged():
    beam = ["--runner", "DirectRunner", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing",
            "--experiments", "a", "--experiments", "b", "--temp_location", "/tmp/x", "--save_main_session",
            "--job_endpoint=embed", "--environment_type=LOOPBACK", "--project", "P", "--region", "r"]
    args, beam_args = parse_job_args(build_parser(), BASE[:2] + beam[:6] + BASE[2:] + beam[6:] + ["--resolution", "256"])
    assert beam_args == beam and args.resolution == 256 and args.out == "out"
    from apache_beam.options.pipeline_options import DebugOptions, DirectOptions, PipelineOptions

    options = PipelineOptions(beam_args)
    assert options.view_as(DirectOptions).direct_num_workers == 2
    assert options.view_as(DebugOptions).experiments == ["a", "b"]
    assert parse_job_args(build_parser(), BASE)[1] == []


def test_no_abbreviations_and_beam_names_known():
    names = beam_option_names()
    assert {"--runner", "--direct_num_workers", "--flink_master", "--spark_master_url", "--job_endpoint",
            "--experiments", "--temp_location", "--setup_file", "--sdk_container_image"} <= set(names)
    assert suggestions("--runer", names)[0] == "--runner"
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution")
    with pytest.raises(SystemExit):
        parse_job_args(parser, ["--res", "3"])  # a prefix is not a flag


# verb argv (without the typo), and the folder it would create
VERBS = {
    "build": lambda d: ["build", "--coco-annotations", f"{d}/a.json", "--coco-images", f"{d}/i", "--out", f"{d}/out"],
    "ingest": lambda d: ["ingest", "coco", "--coco-annotations", f"{d}/a.json", "--coco-images", f"{d}/i",
                         "--out", f"{d}/out"],
    "shard": lambda d: ["shard", "--table", f"{d}/table", "--out", f"{d}/out"],
    "caption": lambda d: ["caption", "--table", f"{d}/table", "--out", f"{d}/out"],
    "remask": lambda d: ["remask", "--shards", f"{d}/shards", "--schedule", "smartbrush", "--out", f"{d}/out"],
    "laion": lambda d: ["laion", "--parquet", f"{d}/x.parquet", "--out", f"{d}/out"],
}


@pytest.mark.parametrize("verb", sorted(VERBS))
@pytest.mark.parametrize("typo", [["--resolutoin", "256"], ["--direct_num_worker=2"]])
def test_every_verb_refuses_a_typo_before_creating_anything(verb, typo, tmp_path, capsys):
    if verb == "laion" and typo[0].startswith("--direct"):
        typo = ["--procesess", "2"]  # laion runs img2dataset, not Beam: its own flags only
    with pytest.raises(SystemExit) as e:
        main(VERBS[verb](tmp_path) + typo)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"unknown flag {typo[0].split('=')[0]}" in err
    assert list(tmp_path.iterdir()) == []  # no output folder, nothing written

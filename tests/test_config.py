import pytest
import yaml

from smartbrush import config
from smartbrush.schemas.mask_schedule import from_dict


def test_presets_load_and_hash_stably():
    assert {"smartbrush", "smartbrush-fine", "pixels", "exact-box"} <= set(config.list_presets("schedules"))
    s = config.load_schedule("smartbrush")
    assert s.num_levels == 5 and [lv.type for lv in s.levels] == ["exact", "blur", "blur", "blur", "box"]
    assert s.hash == config.load_schedule("smartbrush").hash
    assert s.hash != config.load_schedule("smartbrush-fine").hash
    assert config.load_build_config("default") == config.BuildConfig()
    assert config.load_build_config("small").render.resolution == 256


def test_unknown_keys_are_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"render": {"resolutoin": 256}}))
    with pytest.raises(ValueError, match="resolutoin"):
        config.load_build_config(str(p))
    with pytest.raises(ValueError, match="colour"):
        config.load_build_config("default", {"colour": 1})
    with pytest.raises(ValueError, match="unknown build preset"):
        config.load_build_config("nope")


def test_wrong_types_are_errors():
    with pytest.raises(ValueError, match="resolution"):
        config.load_build_config("default", {"render": {"resolution": "big"}})


def test_overrides_and_yaml_round_trip(tmp_path):
    cfg = config.load_build_config("default", {"render": {"resolution": 384}, "shards": {"samples_per_shard": 7}})
    assert cfg.render.resolution == 384 and cfg.shards.samples_per_shard == 7
    p = tmp_path / "resolved.yaml"
    p.write_text(config.to_yaml(cfg))
    assert config.load_build_config(str(p)) == cfg


@pytest.mark.parametrize("levels,msg", [
    ([{"type": "blur", "sigma": 1}, {"type": "box"}], "level 0 must be 'exact'"),
    ([{"type": "exact"}, {"type": "blur", "sigma": 1}], "last level must be 'box'"),
    ([{"type": "exact"}, {"type": "box"}, {"type": "box"}], "must be 'blur'"),
    ([{"type": "exact"}, {"type": "blur", "sigma": 0}, {"type": "box"}], "sigma > 0"),
    ([{"type": "exact"}, {"type": "blur", "sigma": 1, "radius": 3}, {"type": "box"}], "unknown keys"),
    ([{"type": "exact"}], "at least 2"),
])
def test_schedule_validation(levels, msg):
    with pytest.raises(ValueError, match=msg):
        from_dict({"id": "x", "levels": levels})


def test_schedule_from_yaml_file(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("id: mine\nlevels:\n  - type: exact\n  - {type: blur, sigma: 5, units: pixels}\n  - type: box\n")
    s = config.load_schedule(str(p))
    assert s.id == "mine" and s.levels[1].threshold == 0.05


def test_schedule_hash_survives_pickles():
    import dataclasses
    import pickle
    import subprocess
    import sys

    fine = config.load_schedule("smartbrush-fine")
    same = from_dict({"id": "smartbrush-fine", "description": fine.description, "levels": fine.levels_as_dicts()})
    assert same == fine and hash(same) == hash(fine) and hash(fine.levels[1]) == hash(same.levels[1])
    other = dataclasses.replace(fine, id="other")
    assert hash(other) != hash(fine)
    blob = pickle.dumps({fine: "fine", fine.levels[1]: "level 1"})
    # Another process hashes strings with another seed: the pickled keys must still be found there.
    code = ("import pickle, sys; from smartbrush import config; d = pickle.loads(sys.stdin.buffer.read()); "
            "f = config.load_schedule('smartbrush-fine'); print(d[f], '/', d[f.levels[1]])")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout.decode().strip()
    assert out == "fine / level 1"

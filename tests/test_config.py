import pytest

from l2r_lib.config import RunConfig, load_config, save_config


def test_defaults_and_overrides():
    cfg = load_config(overrides={"train.epochs": 1, "tasks": ["svamp"], "student.name": "tiny"})
    assert isinstance(cfg, RunConfig)
    assert cfg.train.epochs == 1.0 and isinstance(cfg.train.epochs, float)
    assert cfg.tasks == ["svamp"] and cfg.student.name == "tiny"
    assert cfg.train.prompt_weight == 0.1 and cfg.train.reflection_weight == 0.5 and cfg.train.margin == 1.0


def test_unknown_key_names_key_and_suggests(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(KeyError, match=r"p\.yaml: unknown config key 'train\.epoch'; did you mean 'epochs'"):
        load_config(path)


@pytest.mark.parametrize("override,key", [
    ({"exam.batch_size": 0}, "exam.batch_size"),
    ({"methods": ["magic"]}, "methods"),
    ({"train.representation": "cls"}, "train.representation"),
    ({"train.lr": "fast"}, "train.lr"),
    ({"rounds": 1.5}, "rounds"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(overrides=override)


def test_roundtrip(tmp_path):
    cfg = load_config(overrides={"seed": 7, "teacher.kind": "reference"})
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_every_params_file_is_valid():
    from conftest import REPO

    files = sorted((REPO / "params").glob("**/*.yaml"))
    assert len(files) >= 9
    for f in files:
        cfg = load_config(f)
        assert cfg.name and cfg.tasks, f

"""One settings loader for DAGs and trainer configs: the same overrides, types and checks."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pipeline.dag import DagError, load_dag
from storage import settings
from tests.conftest import REPO, write_dag
from trainer.config import ConfigError, load_config

AR_TINY = REPO / "trainer/configs/ar-tiny.yaml"


@dataclass
class Inner:
    rate: float = 1.0
    names: list[str] = field(default_factory=list)

    def problems(self):
        if self.rate > 10:
            yield "rate", f"must be <= 10, got {self.rate}"


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    count: int = 1
    note: str | None = None


def test_types_overrides_and_problems_at_any_depth():
    raw = {"inner": {"names": ["a"]}}
    settings.apply_override(raw, "inner.rate=6e-3", settings.SettingsError)  # YAML 1.1 leaves it a string
    built = settings.build(Outer, raw)
    assert built.inner.rate == 0.006 and built.inner.names == ["a"] and built.note is None
    for bad, message in [
        ({"count": True}, r"count: expected int, got True"),
        ({"inner": {"rate": float("inf")}}, r"inner\.rate: expected a finite number"),
        ({"inner": {"names": [1]}}, r"inner\.names\[0\]: expected str"),
        ({"inner": {"rat": 1}}, r"unknown key inner\.rat \(did you mean 'rate'\?\)"),
    ]:
        with pytest.raises(settings.SettingsError, match=message):
            settings.build(Outer, bad)
    with pytest.raises(settings.SettingsError, match=r"^inner\.rate must be <= 10, got 11\.0$"):
        settings.check(settings.build(Outer, {"inner": {"rate": 11}}))
    with pytest.raises(settings.SettingsError, match="is not a section"):
        settings.apply_override({"count": 1}, "count.deeper=2")


def test_trainer_configs_take_the_dag_rules(tmp_path):
    cfg = load_config(AR_TINY, ["optim.lr=6e-3", "run.out=x", "model.prompt_seconds=[2, 8]"])
    assert cfg.optim.lr == 0.006 and cfg.run.out == "x" and cfg.model.prompt_seconds == [2.0, 8.0]
    for override, message in [
        ("optim.lr=.nan", r"optim\.lr: expected a finite number"),
        ("run.max_step=5", r"unknown key run\.max_step \(did you mean 'max_steps'\?\)"),
        ("data.format=tar", r"data\.format must be auto or one of"),
        ("model.group_size=3", r"model\.group_size must be 1, 2, 4 or 8, got 3"),
        ("novalue", r"expected dotted\.key=value"),
    ]:
        with pytest.raises(ConfigError, match=message) as err:
            load_config(AR_TINY, [override])
        assert str(err.value).startswith(f"{AR_TINY}: ")
    with pytest.raises(ConfigError, match="training config .* not found"):
        load_config(tmp_path / "none.yaml")


def test_dags_take_the_trainer_rules(tmp_path, tiny_corpus):
    path = write_dag(tmp_path / "d.yaml", tiny_corpus)
    assert load_dag(path, ["plan.unit_hours=5e-1"]).plan.unit_hours == 0.5  # a number YAML 1.1 reads as text
    with pytest.raises(DagError, match=r"plan\.unit_hours: expected float, got 'lots'"):
        load_dag(path, ["plan.unit_hours=lots"])


def test_valle_train_names_a_bad_key_in_one_line(capsys):
    from trainer.train import main

    assert main([str(AR_TINY), "--data", "nowhere", "run.keep_last=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"valle-train: {AR_TINY}: run.keep_last must be >= 1, got 0"]

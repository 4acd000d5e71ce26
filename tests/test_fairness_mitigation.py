"""`train.fairness` (docs/trust.md): reweighing through a weighted sampler, adversarial debiasing
through gradient reversal, their config and refusals; a tiny run on whas500 (sex) end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from biomx.cli import main
from biomx.config import validate
from biomx.errors import ConfigError
from biomx.fairness.adversary import Adversary, grad_reverse, last_linear
from biomx.fairness.training import OrderedSampler, check_training, reweighing

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).parent.parent / "examples" / "fairness_table.yaml"


def test_gradient_reversal_flips_and_scales_the_gradient() -> None:
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    out = grad_reverse(x, 0.5)
    assert torch.equal(out, x)  # identity forward
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.5, -1.0, -1.5]))  # -lambda times the plain gradient


def test_the_adversary_reads_the_last_linear_and_pushes_the_encoder_away() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    assert last_linear(model) is model[2]
    adversary = Adversary(8, 2, hidden=4, weight=1.0)
    adversary.attach(model)
    x, groups = torch.randn(16, 4), torch.randint(0, 2, (16,))
    model(x)
    assert adversary.representation.shape == (16, 8)  # the input of the output layer
    adversary.loss(groups).backward()
    reversed_grad = model[0].weight.grad.clone()
    model.zero_grad()
    rep = model[1](model[0](x))  # the same loss without the reversal: the opposite gradient
    torch.nn.functional.cross_entropy(adversary.head(rep), groups).backward()
    assert torch.allclose(reversed_grad, -model[0].weight.grad, atol=1e-6)
    assert adversary.seen == 16 and 0 <= adversary.accuracy() <= 1 and adversary.seen == 0


def test_the_weighted_sampler_gives_the_weighted_loss_in_expectation() -> None:
    losses = torch.tensor([1.0, 2.0, 4.0, 8.0])  # per-sample losses of a tiny training split
    weights = torch.tensor([3.0, 1.0, 1.0, 1.0])
    data = torch.utils.data.TensorDataset(losses)
    sampler = OrderedSampler(data, weights.double(), num_replicas=1, rank=0, seed=0)
    drawn = []
    for epoch in range(4000):
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    mean_loss = losses[drawn].mean().item()  # what the task's mean loss sees over the epochs
    assert mean_loss == pytest.approx(float((weights * losses).sum() / weights.sum()), rel=0.02)  # 2.5, not 3.75
    assert mean_loss != pytest.approx(losses.mean().item(), rel=0.1)
    sampler.set_epoch(7)
    whole = list(sampler)
    sampler.start = 2  # a resumed epoch: the same draw, from where it stopped
    assert list(sampler) == whole[2:] and sampler.order == whole
    plain = OrderedSampler(data, None, num_replicas=1, rank=0, seed=0)
    assert sorted(plain) == [0, 1, 2, 3]  # no weights: a permutation, as the Trainer's own sampler


def test_reweighing_makes_group_and_label_independent() -> None:
    groups = np.array(["a"] * 6 + ["b"] * 4)
    labels = torch.tensor([1, 1, 1, 1, 1, 0, 1, 0, 0, 0])
    train = np.arange(10)
    w, cells = reweighing(groups, labels, train)
    assert w.mean() == pytest.approx(1.0)
    for g in "ab":  # weighted positive rate equal in both groups (= the overall rate 0.6)
        inside = groups == g
        assert (w[inside] * labels.numpy()[inside]).sum() / w[inside].sum() == pytest.approx(0.6)
    assert cells["a, label 1"] == pytest.approx(0.6 * 0.6 / 0.5, abs=1e-4)  # P(a) P(1) / P(a, 1)
    assert cells["b, label 0"] == pytest.approx(0.4 * 0.4 / 0.3, abs=1e-4)
    w, cells = reweighing(groups, torch.linspace(0, 1, 10), train)  # a regression target: groups balanced
    assert w[groups == "a"].sum() == pytest.approx(w[groups == "b"].sum()) and set(cells) == {"a", "b"}


def _cfg(table: str, **fairness) -> dict:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["data"]["path"] = table
    cfg["train"]["fairness"] = fairness
    return cfg


def test_config_typos_and_refusals_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"train.fairness: unknown key 'reweigth'; did you mean 'reweight'"):
        validate(_cfg("x.csv", reweigth="gender"))
    with pytest.raises(ConfigError, match=r"train.fairness.adversary: unknown key 'wieght'; did you mean 'weight'"):
        validate(_cfg("x.csv", adversary={"column": "gender", "wieght": 2}))
    with pytest.raises(ConfigError, match=r"train.fairness.reweight: 'site' is not in eval.subgroups"):
        check_training(validate(_cfg("x.csv", reweight="site")))
    private = _cfg("x.csv", adversary={"column": "gender"})
    private["train"]["privacy"] = {"epsilon": 5.0}
    with pytest.raises(ConfigError, match="train.fairness: not supported with train.privacy"):
        check_training(validate(private))
    auto = _cfg("x.csv", reweight="gender")
    auto["model"] = {"name": "auto"}
    with pytest.raises(ConfigError, match="model.name: auto"):
        check_training(validate(auto))
    check_training(validate(_cfg("x.csv", reweight="gender")))  # a column of eval.subgroups: accepted


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("whas")
    assert main(["datasets", "--name", "whas500", "--export", str(root)]) == 0
    return root / "whas500.csv"


def test_a_reweighted_debiased_run_trains_and_reports_the_mitigation(table: Path, tmp_path: Path) -> None:
    cfg = _cfg(str(table), reweight="gender", adversary={"column": "gender", "weight": 1.0, "hidden": 8})
    cfg["model"]["args"] = {"width": 16, "depth": 1}
    cfg["train"].update(epochs=2, progress=False)
    cfg["eval"].update(bootstrap=0, subgroups=["gender"])
    cfg["output"] = {"dir": str(tmp_path / "runs"), "name": "fair", "tensorboard": False}
    path = tmp_path / "fair.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    run = tmp_path / "runs" / "fair"
    facts = json.loads((run / "fairness_training.json").read_text())
    assert set(facts["reweight"]["weights"]) == {f"{g}, label {y}" for g in "01" for y in "01"}
    assert len(facts["adversary"]["accuracy_by_epoch"]) == 2 and 0.5 < facts["adversary"]["chance"] < 1
    assert 0.5 < facts["adversary"]["probe"]["accuracy"] <= 1  # sex is an input column: a probe reads it
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train_loss"]) for r in rows if "train_loss" in r)
    assert json.loads((run / "subgroups.json").read_text())["mitigation"] == facts
    report = (run / "report.html").read_text()
    assert "Fairness mitigation in training" in report and "fresh probe accuracy" in report
    assert main(["train", "--resume", str(run), "--set", "train.epochs=3"]) == 0  # its param group reloads
    resumed = json.loads((run / "fairness_training.json").read_text())["adversary"]["accuracy_by_epoch"]
    assert resumed[:2] == facts["adversary"]["accuracy_by_epoch"] and len(resumed) == 3

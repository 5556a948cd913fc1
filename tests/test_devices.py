"""One device decision: models are built on the CPU and moved, data follows the model, random draws come from CPU
generators, results leave through ``.cpu()``.

A CPU-only machine has no second device to mix with, so the mixing test turns the question around: the model and
data stay on the CPU while torch's *default* device is ``meta``. Any tensor a method creates without taking its
device from the model or its generator then lands on ``meta``, and combining it with the CPU model fails loudly, just
as a CPU tensor combined with a GPU model would. Where a CUDA GPU exists, the whole flow also runs on it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.utils.data.dataloader as torch_dataloader

from disgorge import devices, get_method
from disgorge.cli import main
from disgorge.ledger import Record
from disgorge.methods import UnlearnRequest
from disgorge.methods.registry import METHODS
from disgorge.spec import ModelSpec, Recipe, RecipeError, TrainSpec
from disgorge.tasks import get_task
from disgorge.training.trainer import fit_recipe

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@contextlib.contextmanager
def default_device_meta() -> Iterator[None]:
    """Make ``meta`` torch's default device, except inside DataLoader iteration (torch's own sampler draws its
    seeds without naming a device; that is torch's business, not a method's)."""
    patched = []
    cls = torch_dataloader._SingleProcessDataLoaderIter
    for name in ("__init__", "__next__"):
        original = getattr(cls, name)

        def on_cpu(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with torch.device("cpu"):
                return _original(self, *args, **kwargs)

        setattr(cls, name, on_cpu)
        patched.append((name, original))
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)
        for name, original in patched:
            setattr(cls, name, original)


def _records(n: int = 90, classes: int = 3, seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3, size=(classes, 4))
    return [Record(i, "s", "", {"x": (centres[i % classes] + rng.normal(size=4)).astype(np.float32),
                                "y": np.array([i % classes])}, {}, "train", "active") for i in range(n)]


@pytest.fixture(scope="module")
def linear_problem() -> tuple[Any, UnlearnRequest]:
    """A trained L2-regularised linear model (newton serves it) and a request forgetting a ninth of its data."""
    task = get_task("classification")
    data = task.dataset(_records())
    recipe = Recipe(name="dev", model=ModelSpec("linear", {}),
                    train=TrainSpec(optimizer="sgd", lr=0.1, weight_decay=0.01, epochs=200, batch_size=90))
    info = task.data_info(data, recipe.model)
    model, _ = fit_recipe(task, recipe, data, info)
    request = UnlearnRequest(task=task, forget=data.subset(range(10)), retain=data.subset(range(10, 90)),
                             train=recipe.train, data_info=info)
    return model, request


def _budget(name: str) -> dict[str, Any]:
    """A few steps are enough to run every line of a method's step; newton's certificate bound is not the question."""
    fields = get_method(name).Config.__dataclass_fields__
    return {"max_steps": 3} if "max_steps" in fields else {"max_residual": 1.0} if name == "newton" else {}


CLASSIFIER_METHODS = [m for m in METHODS.names() if not {"text", "hidden_states"} & set(METHODS.get(m).needs)]


@pytest.mark.parametrize("name", CLASSIFIER_METHODS)
def test_classifier_methods_create_no_tensor_away_from_the_model(name: str, linear_problem: Any) -> None:
    model, request = linear_problem
    method = get_method(name, **_budget(name))
    with default_device_meta():
        out = method.unlearn(model, request)
    assert devices.of(out) == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in out.parameters())


LM_METHODS = ["npo", "simnpo", "grad_diff", "idk", "rmu", "gradient_ascent", "undial", "wga", "flat", "pdu"]


@pytest.mark.parametrize("name", LM_METHODS)
def test_language_model_methods_create_no_tensor_away_from_the_model(name: str, people_mini: Any) -> None:
    p = people_mini
    request = UnlearnRequest(task=p.task, forget=p.forget, retain=p.retain, train=p.recipe.train, data_info=p.info)
    method = get_method(name, **_budget(name))
    with default_device_meta():
        out = method.unlearn(p.model, request)
    assert devices.of(out) == torch.device("cpu")


def test_the_mixing_check_catches_a_tensor_made_on_the_default_device(linear_problem: Any) -> None:
    """The test above would fail on a method that builds a tensor without a device: shown on a one-line loss."""
    model, request = linear_problem
    batch = request.forget.tensors_slice(0, 4)
    with default_device_meta(), pytest.raises((RuntimeError, NotImplementedError)):
        loss = request.task.per_example_loss(model, batch)
        (loss + torch.zeros(len(loss))).sum().backward()  # zeros on the default device: the bug the test catches


def test_a_whole_erasure_creates_no_tensor_away_from_the_models(backdoor_ws: Any, trained_id: str) -> None:
    """Unlearning, training the reference, measuring, the robustness attacks and the certificate, with torch's
    default device set to ``meta``: every tensor the flow makes is placed deliberately."""
    from disgorge import api

    with default_device_meta():
        result = api.forget(backdoor_ws, sources=["contributor-07"], method="grad_diff", accept_failed=True,
                            verify="exact")
    model, _, _ = backdoor_ws.load_model(result.children[0].id)
    assert devices.of(model) == torch.device("cpu")
    assert result.certificates[0]["metrics"]["unlearned"]["ta"] > 50


def test_evaluation_results_are_numpy_from_any_model_device(linear_problem: Any) -> None:
    model, request = linear_problem
    out = request.task.evaluate(model, request.retain)
    assert isinstance(out["loss"], np.ndarray) and out["loss"].shape == (80,)
    assert out["correct"].mean() > 0.9


def test_device_names_are_checked_and_resolved() -> None:
    assert devices.resolve("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert devices.resolve("auto").type == "cuda"
    with pytest.raises(RecipeError, match="must be one of auto, cpu, cuda, mps"):
        devices.resolve("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(devices.DeviceError, match="no CUDA GPU"):
            devices.resolve("cuda")


def test_recipe_device_and_precision_are_checked_and_left_out_at_their_defaults() -> None:
    plain = Recipe.from_toml('name = "a"\n')
    assert "device" not in plain.to_toml() and "precision" not in plain.to_toml()
    pinned = Recipe.from_toml('name = "a"\n[train]\ndevice = "cpu"\nprecision = "bf16"\n')
    assert pinned.train.device == "cpu" and 'device = "cpu"' in pinned.to_toml()
    assert pinned.sha256 != plain.sha256
    with pytest.raises(RecipeError, match=r"train\.precision must be one of fp32, bf16"):
        Recipe.from_toml('name = "a"\n[train]\nprecision = "fp16"\n')


def _cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _train(capsys: pytest.CaptureFixture[str], tmp_path: Any, *args: str) -> tuple[int, str]:
    ws = tmp_path / "ws"
    if not ws.exists():
        assert _cli(capsys, "init", ws)[0] == 0
        assert _cli(capsys, "ingest", "--scenario", "digits-backdoor", "-w", ws)[0] == 0
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "d"\n[model]\nfamily = "linear"\n[train]\nepochs = 2\n', encoding="utf-8")
    return _cli(capsys, "train", recipe, "-w", ws, *args)


def test_device_cpu_gives_the_same_weights_as_the_default_on_a_cpu_machine(capsys: Any, tmp_path: Any) -> None:
    default = _train(capsys, tmp_path)
    pinned = _train(capsys, tmp_path, "--device", "cpu")  # accepted after the command, too
    assert default[0] == 0 and pinned[0] == 0, default[1] + pinned[1]
    sha = [out.split("weights sha256 ")[1].split()[0] for _, out in (default, pinned)]
    if not torch.cuda.is_available():
        assert sha[0] == sha[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_asking_for_a_missing_gpu_is_one_line_and_changes_nothing(capsys: Any, tmp_path: Any) -> None:
    assert _train(capsys, tmp_path)[0] == 0
    code, out = _train(capsys, tmp_path, "--device", "cuda")
    assert code == 2 and "no CUDA GPU" in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1
    code, out = _train(capsys, tmp_path, "--device", "tpu")
    assert code == 2 and "--device must be one of auto, cpu, cuda, mps" in out
    assert not (tmp_path / "ws" / "models" / "m2").exists()


@CUDA
def test_full_flow_on_a_gpu(capsys: Any, tmp_path: Any) -> None:
    assert _train(capsys, tmp_path, "--device", "cuda")[0] == 0
    ws = tmp_path / "ws"
    code, out = _cli(capsys, "--device", "cuda", "forget", "-w", ws, "--source", "contributor-07", "--method",
                     "grad_diff", "--accept-failed")
    assert code == 0, out
    cert = json.loads(next((ws / "reports").rglob("certificate.json")).read_text())
    assert "cuda" in cert["machine"]["device"]
    code, out = _cli(capsys, "--device", "cuda", "evaluate", "m2", "-w", ws, "--json")
    assert code == 0 and json.loads(out)["test"]["accuracy"] > 50


@CUDA
@pytest.mark.parametrize("name", LM_METHODS)
def test_language_model_methods_run_on_a_gpu(name: str, people_mini: Any) -> None:
    p = people_mini
    model = p.model.to("cuda")
    request = UnlearnRequest(task=p.task, forget=p.forget, retain=p.retain, train=p.recipe.train, data_info=p.info)
    out = get_method(name, **_budget(name)).unlearn(model, request)
    assert devices.of(out).type == "cuda"
    assert p.task.evaluate(out, p.forget)["loss"].shape == (len(p.forget),)
    p.model.to("cpu")


def test_bf16_mixed_precision_runs_through_accelerate_and_leaves_fp32_untouched(people_mini: Any) -> None:
    import dataclasses

    p = people_mini
    data = p.train.subset(p.train.ids[:64])

    def final_loss(precision: str) -> float:
        recipe = p.recipe.replace(train=dataclasses.replace(p.recipe.train, epochs=1, precision=precision))
        return fit_recipe(p.task, recipe, data, p.info)[1].losses[-1]

    fp32 = final_loss("fp32")
    bf16 = final_loss("bf16")
    assert np.isfinite(bf16) and bf16 != fp32  # autocast changed the arithmetic
    assert final_loss("fp32") == fp32  # and a later fp32 run is bit-identical again

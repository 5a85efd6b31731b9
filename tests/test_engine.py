"""course_utils.engine: the one training step, its device choices and eval_mode."""
from pathlib import Path

import pytest
import torch
from torch import nn

import course_utils as cu
from course_utils import engine

CPU = torch.device("cpu")


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1), nn.Sigmoid())


def _batch(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_cpu_bf16_detection_agrees_with_proc_cpuinfo():
    """Native bf16 is reported exactly when the processor lists a bf16 instruction set."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = set(path.read_text().split())
    listed = bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    assert engine.cpu_has_native_bf16() == listed


@pytest.mark.parametrize("amp, expected", [
    (False, None), (None, None), ("none", None), ("bf16", torch.bfloat16), (True, torch.bfloat16)])
def test_amp_vocabulary_on_the_cpu(amp, expected):
    assert cu.resolve_amp(amp, CPU) == expected


def test_auto_amp_on_the_cpu_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    assert cu.resolve_amp("auto", CPU) == torch.bfloat16
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)
    assert cu.resolve_amp("auto", CPU) is None  # no slow emulated bf16 on a laptop without it
    assert cu.resolve_amp("auto", torch.device("mps")) is None


def test_amp_errors_say_what_to_use():
    with pytest.raises(cu.CourseError, match="fp16 mixed precision needs a CUDA GPU.*amp='bf16'"):
        cu.resolve_amp("fp16", CPU)
    with pytest.raises(cu.CourseError, match="amp must be one of"):
        cu.resolve_amp("float16", CPU)


def test_step_trains_and_returns_a_detached_loss_on_the_device():
    model = _tiny_model()
    step = cu.TrainStep(model, device=CPU, lr=1e-2, amp=False, channels_last=False, fused=False)
    x = _batch()
    losses = [step(x) for _ in range(30)]
    assert not losses[0].requires_grad and losses[0].device == CPU
    assert float(losses[-1]) < float(losses[0])


def test_input_transform_changes_the_inputs_only():
    """A denoising step: the model sees the corrupted batch, the loss compares with the clean one."""
    seen = []
    model = _tiny_model()
    model.register_forward_hook(lambda m, i, o: seen.append((i[0].detach().clone(), o.detach().clone())))
    step = cu.TrainStep(model, device=CPU, amp=False, channels_last=False, fused=False,
                        input_transform=lambda x: torch.zeros_like(x))
    x = _batch()
    loss = step(x)
    inputs, out = seen[0]
    assert torch.equal(inputs, torch.zeros_like(x))
    assert float(loss) == pytest.approx(float(nn.functional.mse_loss(out, x)), rel=1e-6)


def test_gradient_clipping_bounds_the_update():
    """With max_grad_norm and plain SGD (no momentum effect on step 1), the first update is at most lr * norm."""
    model = _tiny_model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    step = cu.TrainStep(model, device=CPU, lr=1.0, optimizer="sgd", amp=False, channels_last=False,
                        max_grad_norm=1e-3, loss=lambda out, target: 1e6 * (out - target).pow(2).mean())
    step(_batch())
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float((after - before).norm()) <= 1e-3 * 1.0001


def test_auto_settings_are_recorded():
    step = cu.TrainStep(_tiny_model(), device=CPU)
    assert step.settings["channels_last"] is True
    assert step.settings["fused"] == engine.fused_optimizer_supported(CPU)
    assert step.settings["amp"] == ("bfloat16" if engine.cpu_has_native_bf16() else None)


def test_schedule_steps_with_the_optimizer():
    step = cu.TrainStep(_tiny_model(), device=CPU, lr=1e-2, schedule="onecycle", total_steps=10, amp=False)
    lrs = []
    for _ in range(10):
        step(_batch())
        lrs.append(step.lr)
    assert max(lrs) == pytest.approx(1e-2, rel=0.05) and lrs[-1] < max(lrs) / 10  # warm up, then anneal


def test_classification_target():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    step = cu.TrainStep(model, device=CPU, lr=1e-1, loss="cross_entropy", amp=False, channels_last=False)
    x, y = _batch(), torch.arange(8) % 3
    first = float(step(x, target=y))
    for _ in range(50):
        last = float(step(x, target=y))
    assert last < first / 2


def test_eval_mode_restores_the_mode_even_on_an_error():
    model = _tiny_model().train()
    with pytest.raises(RuntimeError):
        with cu.eval_mode(model):
            assert not model.training
            raise RuntimeError("boom")
    assert model.training
    model.eval()
    with cu.eval_mode(model):
        pass
    assert not model.training


def test_compiling_on_a_cpu_only_machine_stores_no_cuda_warning():
    """Chapter 05 compiles on the CPU; torch's 'No CUDA runtime is found' log line must not land in its outputs."""
    import subprocess
    import sys
    code = ("import torch, course_utils as cu; from torch import nn\n"
            "cu.TrainStep(nn.Linear(2, 2), device='cpu', compile=True, amp=False)\n"
            "import torch.utils.cpp_extension\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={"CUDA_HOME": "/usr/local", "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr
    assert "No CUDA runtime" not in result.stderr

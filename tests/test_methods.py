"""KD and FCFD against their definitions (docs/methods.md); the registry."""

import math

import pytest
import torch

from pcbench.methods import get_method, method_names
from pcbench.methods.base import DataInfo, Step, kd_loss
from pcbench.methods.fcfd import FCFDConfig, batch_stats_only
from pcbench.models import Tapped, create_model, model_info


def test_registry_lists_the_slice_methods():
    assert {"ce", "kd", "pc", "ot", "fcfd"} <= set(method_names())


def test_kd_loss_matches_the_formula_by_hand():
    zs, zt, t = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[0.5, 1.0, 3.0]]), 2.0
    p = torch.softmax(zt / t, 1)[0].tolist()
    q = torch.softmax(zs / t, 1)[0].tolist()
    expected = t * t * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert kd_loss(zs, zt, t).item() == pytest.approx(expected, rel=1e-6)


def _fcfd(config: FCFDConfig):
    torch.manual_seed(0)
    student, teacher = create_model("cnn_small", 10, 1), create_model("cnn_large", 10, 1)
    teacher.eval().requires_grad_(False)
    method = get_method("fcfd")(config, model_info(student, (1, 8, 8)), model_info(teacher, (1, 8, 8)),
                                DataInfo(10, 100, epochs=20))
    taps = set(student.stage_taps)
    return student, teacher, method, Tapped(student, taps), Tapped(teacher, taps)


def _step(student, teacher, s_taps, t_taps, epoch=0):
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        t_feats = t_taps(x)
    return Step(x, torch.randint(0, 10, (16,)), torch.arange(16), epoch, s_taps(x), t_feats,
                student, teacher)


def test_every_mixed_path_produces_logits_of_the_right_shape():
    student, teacher, method, s_taps, t_taps = _fcfd(FCFDConfig(paths=4))
    assert len(method.mixed_paths) == 4  # 2 directions x (3 stages - 1)
    step = _step(student, teacher, s_taps, t_taps)
    for direction, k in method.mixed_paths:
        net = teacher if direction == "s2t" else student
        h = (method.s2t[k - 1](step.student_feats[f"stage{k}"]) if direction == "s2t"
             else method.t2s[k - 1](step.teacher_feats[f"stage{k}"]))
        outs = net.run_stages(h, k)
        assert [o.shape for o in outs] == [step.teacher_feats[f"stage{j}"].shape if direction == "s2t"
                                           else step.student_feats[f"stage{j}"].shape
                                           for j in range(k + 1, 4)]
        assert net.head(outs[-1]).shape == (16, 10)


def test_s2t_gradient_reaches_bridge_and_student_but_no_teacher_parameter():
    student, teacher, method, s_taps, t_taps = _fcfd(FCFDConfig(directions="s2t", paths=2))
    terms = method(_step(student, teacher, s_taps, t_taps))
    terms["mix"].backward()  # only through the s->t paths: teacher stages after the switch
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.s2t.parameters())
    assert student.stages[0][0][0].weight.grad.abs().sum() > 0


def test_mixed_paths_leave_running_statistics_untouched():
    student, teacher, method, s_taps, t_taps = _fcfd(FCFDConfig(directions="t2s", paths=2,
                                                                teacher_train_mode=True))
    student.train()
    teacher.train()
    step = _step(student, teacher, s_taps, t_taps)
    before = {k: v.clone() for k, v in {**student.state_dict(), **{f"t.{k}": v for k, v in
                                                                  teacher.state_dict().items()}}.items()}
    with batch_stats_only(student), batch_stats_only(teacher):
        student.run_stages(method.t2s[0](step.teacher_feats["stage1"]), 1)
        teacher.run_stages(method.s2t[0](step.student_feats["stage1"]), 1)
    after = {**student.state_dict(), **{f"t.{k}": v for k, v in teacher.state_dict().items()}}
    assert all(torch.equal(before[k], after[k]) for k in before)
    method(step)  # the whole loss: mixed paths run inside the same context
    running = [k for k in student.state_dict() if "running" in k and k.startswith("stages.2")]
    assert all(torch.equal(before[k], student.state_dict()[k]) for k in running)


def test_feature_terms_ramp_up_over_a_share_of_the_epochs():
    _, _, method, _, _ = _fcfd(FCFDConfig(warmup_share=0.2))  # 4 of the trial's 20 epochs
    assert [method.ramp(e) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert FCFDConfig().warmup_share * 240 == pytest.approx(20)  # the authors' 20 of 240

"""trainhub.kit.distill: which teacher layers a shallower student takes, and the checked copy of the teacher's
weights into the student (all or nothing, one error line naming the keys)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainhub import UserError
from trainhub.config import DistillConfig
from trainhub.kit.distill import init_from_teacher, spread_layers


def test_spread_layers_every_other_and_parity():
    assert spread_layers(2, 1) == [0]
    assert spread_layers(4, 2) == [0, 2]  # every other layer, from the first (DistilBERT)
    assert spread_layers(6, 3) == [0, 2, 4]
    assert spread_layers(3, 3) == [0, 1, 2]
    assert spread_layers(4, 2, keep_parity=True) == [0, 3]  # a shifted student layer starts from a shifted one
    assert spread_layers(8, 4, keep_parity=True) == [0, 3, 4, 7]
    for t in range(1, 12):
        for s in range(1, t + 1):
            for parity in (False, True):
                p = spread_layers(t, s, parity)
                assert len(p) == s and p == sorted(set(p)) and 0 <= p[0] and p[-1] < t
                assert not parity or all(i % 2 == j % 2 for j, i in enumerate(p))
    with pytest.raises(UserError, match="student of 3 layers.*teacher of 2"):
        spread_layers(2, 3)


def net(widths: list[int]) -> nn.Sequential:
    return nn.Sequential(*[nn.Linear(a, b) for a, b in zip(widths, widths[1:])])


def test_init_from_teacher_copies_the_mapped_tensors_exactly():
    torch.manual_seed(0)
    teacher, student = net([4, 8, 8, 8, 2]), net([4, 8, 8, 2])
    mapping = init_from_teacher(student, teacher, lambda k: {"1": "2", "2": "3"}.get(k[0], k[0]) + k[1:])
    assert mapping["1.weight"] == "2.weight" and mapping["2.bias"] == "3.bias" and len(mapping) == 6
    for skey, tkey in mapping.items():
        assert torch.equal(student.state_dict()[skey], teacher.state_dict()[tkey])
    assert DistillConfig().init_from_teacher is False


def test_init_from_teacher_mismatch_is_one_line_naming_the_keys_and_copies_nothing():
    teacher, student = net([4, 8, 2]), net([4, 6, 2])
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(UserError) as e:
        init_from_teacher(student, teacher, hint="use the teacher's widths")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("distill.init_from_teacher: 3 of the student's 4 tensors")
    assert "0.weight (student [6, 4], teacher 0.weight [8, 4])" in msg and msg.endswith("use the teacher's widths")
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    with pytest.raises(UserError, match=r"1 of the student's 4 tensors.*0\.bias \(no teacher tensor\)"):
        init_from_teacher(net([4, 8, 2]), net([4, 8, 2]), lambda k: None if k == "0.bias" else k)

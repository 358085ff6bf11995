"""The collaborative run's outer step: Nesterov SGD on the mean change, byte-reproducible."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shardrun.train.outer import (OuterSettings, OuterStepError, change_of, digest, outer_step, pack, packed_size,
                                  unpack)


def _weights(seed, shapes=((3, 3, 1, 4), (4,), (2, 5))):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def test_the_outer_step_is_keras_nesterov_sgd_on_the_negated_mean_change():
    import keras

    start = _weights(0)
    rounds = [[_weights(10 * r + i) for i in range(3)] for r in range(3)]
    cfg = OuterSettings(learning_rate=0.7, momentum=0.9)
    ours, momentum = start, None
    variables = [keras.Variable(w) for w in start]
    sgd = keras.optimizers.SGD(learning_rate=0.7, momentum=0.9, nesterov=True)
    for replicas in rounds:
        changes = [change_of(ours, [w + 0.01 * e for w, e in zip(ours, r)]) for r in replicas]
        gradient = [-np.mean([c[k] for c in changes], axis=0) for k in range(len(start))]
        sgd.apply_gradients(zip(gradient, variables))
        ours, momentum = outer_step(ours, momentum, changes, cfg)
        for mine, theirs in zip(ours, variables):
            np.testing.assert_allclose(mine, np.asarray(theirs), rtol=1e-5, atol=1e-6)


def test_one_replica_with_rate_one_and_no_momentum_takes_its_weights():
    start, end = _weights(1), _weights(2)
    new, _ = outer_step(start, None, [change_of(start, end)], OuterSettings(1.0, 0.0))
    for n, e in zip(new, end):
        np.testing.assert_allclose(n, e, rtol=0, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 5))
def test_whoever_computes_a_round_gets_the_same_bytes(seed, replicas):
    start = _weights(seed)
    changes = [change_of(start, _weights(seed + 1 + i)) for i in range(replicas)]
    first = outer_step(start, None, changes, OuterSettings())
    again = outer_step([w.copy() for w in start], None, [[c.copy() for c in ch] for ch in changes], OuterSettings())
    assert pack(first[0]) == pack(again[0]) and pack(first[1]) == pack(again[1])
    assert digest(first[0]) == digest(again[0])


def test_packed_arrays_round_trip_and_bad_bytes_are_named():
    arrays = _weights(3) + [np.zeros((0, 2), np.float32)]
    back = unpack(pack(arrays))
    assert [a.shape for a in back] == [a.shape for a in arrays]
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back))
    data = pack(arrays)
    for broken, reason in ((b"nonsense", "not a shardrun array file"), (data[:-4], "truncated"),
                           (data + b"xx", "bytes past its arrays")):
        with pytest.raises(OuterStepError, match=reason) as info:
            unpack(broken, "rounds/3/replica-1.change")
        assert "rounds/3/replica-1.change" in str(info.value)


def test_changes_that_cannot_be_combined_are_refused():
    start = _weights(4)
    with pytest.raises(OuterStepError, match="at least one replica"):
        outer_step(start, None, [], OuterSettings())
    with pytest.raises(OuterStepError, match="replica 1's change does not have the model's shapes"):
        outer_step(start, None, [change_of(start, _weights(5)), _weights(6, ((1,),))], OuterSettings())
    poisoned = change_of(start, _weights(7))
    poisoned[0][0, 0, 0, 0] = np.nan
    with pytest.raises(OuterStepError, match="replica 0's change holds NaN"):
        outer_step(start, None, [poisoned], OuterSettings())


def test_packed_size_is_what_pack_writes_so_plan_can_keep_room_for_a_round():
    for arrays in (_weights(8), _weights(9, ((3, 3, 1, 64), (64,), (5, 5, 64, 32), (32,))), [np.zeros((0,), np.float32)]):
        assert packed_size([a.shape for a in arrays]) == len(pack(arrays))

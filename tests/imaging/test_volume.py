"""Volume and its frame axis: gates or timed dynamic frames, said rather than guessed."""

from __future__ import annotations

import numpy as np
import pytest

from node.imaging.volume import FrameAxis, FrameSchedule, Volume


def test_a_4d_volume_knows_what_its_frames_are() -> None:
    affine = np.eye(4)
    gated = Volume(np.ones((8, 4, 5, 6)), affine)  # the NM reader's convention: 4-D without an axis = gates
    assert gated.frame_axis == FrameAxis.gates(8) and gated.is_gated and not gated.is_dynamic
    assert gated.summed().voxels.shape == (4, 5, 6) and gated.summed().frame_axis is None
    frames = FrameAxis.dynamic([0.0, 10.0, 30.0], [10.0, 20.0, 60.0])
    dynamic = Volume(np.ones((3, 4, 5, 6)), affine, frames)
    assert dynamic.is_dynamic and not dynamic.is_gated
    assert np.allclose(frames.mid_s, [5.0, 20.0, 60.0])
    with pytest.raises(ValueError, match="dynamic"):
        dynamic.summed()
    filtered = dynamic.with_voxels(2.0 * dynamic.voxels)
    assert filtered.frame_axis is frames and filtered.affine is affine
    assert Volume(np.ones((4, 5, 6)), affine).frame_axis is None


def test_frame_axes_that_contradict_the_voxels_are_refused() -> None:
    affine = np.eye(4)
    with pytest.raises(ValueError, match="frames"):
        Volume(np.ones((3, 4, 5, 6)), affine, FrameAxis.gates(8))
    with pytest.raises(ValueError, match="3D"):
        Volume(np.ones((4, 5, 6)), affine, FrameAxis.gates(4))
    with pytest.raises(ValueError, match="start times"):
        FrameAxis("dynamic", 3, FrameSchedule(np.array([0.0, 10.0]), np.array([10.0, 10.0])))
    with pytest.raises(ValueError, match="durations must be > 0"):
        FrameAxis.dynamic([0.0, 10.0], [10.0, 0.0])
    with pytest.raises(ValueError, match="time order"):
        FrameAxis.dynamic([0.0, 5.0], [10.0, 10.0])
    with pytest.raises(ValueError, match="no frame times"):
        FrameAxis("gates", 2, FrameSchedule(np.array([0.0, 1.0]), np.array([1.0, 1.0])))
    with pytest.raises(ValueError, match="no frame times"):
        _ = FrameAxis.gates(8).mid_s

"""The fixed conventions: AHA segments, polar grid, bull's-eye orientation, LV frame, UIDs."""

from __future__ import annotations

import numpy as np
import pytest

from node.quant.lv_frame import LVFrame
from node.quant.segments import (
    DEFAULT_GRID,
    SEGMENT_NAMES,
    TERRITORY_SEGMENTS,
    PolarGrid,
    bullseye,
    segment_of,
    territory_of_segment,
)
from node.uids import InvalidUIDError, deterministic_uid, is_valid_uid, validate_uid

# (segment, ring, psi span start, psi span end) from the reference table (Cerqueira 2002)
TABLE = [
    (1, "basal", -30, 30), (2, "basal", 30, 90), (3, "basal", 90, 150),
    (4, "basal", 150, 210), (5, "basal", 210, 270), (6, "basal", 270, 330),
    (7, "mid", -30, 30), (8, "mid", 30, 90), (9, "mid", 90, 150),
    (10, "mid", 150, 210), (11, "mid", 210, 270), (12, "mid", 270, 330),
    (13, "apical", -45, 45), (14, "apical", 45, 135), (15, "apical", 135, 225), (16, "apical", 225, 315),
]
RING_V = {"apical": (0.0, 1 / 3), "mid": (1 / 3, 2 / 3), "basal": (2 / 3, 1.0)}


@pytest.mark.parametrize("segment,ring,psi0,psi1", TABLE)
def test_segment_of_matches_the_aha_table_away_from_borders(segment, ring, psi0, psi1):
    u_cap = 0.1
    v0, v1 = RING_V[ring]
    v = np.linspace(v0 + 0.01, v1 - 0.01, 7)
    psi = np.linspace(psi0 + 0.5, psi1 - 0.5, 11)
    vv, pp = np.meshgrid(v, psi)
    u = u_cap + vv * (1 - u_cap)
    assert np.all(segment_of(u, pp, u_cap) == segment), SEGMENT_NAMES[segment]


def test_apex_cap_is_segment_17_and_territories_partition_the_segments():
    assert np.all(segment_of(np.linspace(0, 0.099, 5), np.linspace(0, 359, 5), 0.1) == 17)
    all_segments = sorted(s for segs in TERRITORY_SEGMENTS.values() for s in segs)
    assert all_segments == list(range(1, 18))
    assert territory_of_segment(17) == "LAD" and territory_of_segment(16) == "LCx"
    with pytest.raises(ValueError):
        territory_of_segment(18)


def test_polar_grid_segment_borders_fall_on_cell_edges():
    grid = DEFAULT_GRID
    ids = grid.segment_ids()
    assert ids.shape == grid.shape == (40, 72)
    counts = np.bincount(ids.ravel(), minlength=18)[1:]
    # each ring covers 12 rows; 6 sectors of 12 columns, 4 sectors of 18 columns; cap 4 rows x 72
    assert list(counts[:12]) == [12 * 12] * 12
    assert list(counts[12:16]) == [12 * 18] * 4
    assert counts[16] == 4 * 72
    means = grid.segment_means(ids.astype(float))
    np.testing.assert_allclose(means, np.arange(1, 18))
    with pytest.raises(ValueError):
        grid.segment_means(np.zeros((3, 3)))
    assert PolarGrid(n_cap=2, n_per_third=4, n_psi=36).shape == (14, 36)


def test_bullseye_puts_anterior_top_septum_left_lateral_right_inferior_bottom():
    ids = bullseye(DEFAULT_GRID.segment_ids().astype(float), size=101)
    centre = 50
    assert ids[centre, centre] == 17
    assert ids[2, centre] == 1  # top: basal anterior
    assert ids[centre, 2] in (2, 3)  # left: septal
    assert ids[centre, 98] in (5, 6)  # right: lateral
    assert ids[98, centre] == 4  # bottom: basal inferior
    assert np.isnan(ids[0, 0])  # outside the disc


def test_lv_frame_azimuth_convention():
    frame = LVFrame.from_points(np.array([40.0, -40.0, -40.0]), np.zeros(3))
    rotation = frame.rotation
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(-1.0)  # (l, a, s) is left-handed by definition
    anterior_point = frame.apex_mm + 50 * frame.anterior
    septal_point = frame.apex_mm + 50 * frame.septal
    assert frame.cylindrical(anterior_point)[2] % 360 == pytest.approx(0.0, abs=1e-9)
    assert frame.cylindrical(septal_point)[2] == pytest.approx(90.0)
    assert frame.septal[0] < 0  # septum toward the patient's right (LPS -x)
    back = frame.to_patient(frame.to_lv(np.array([1.0, 2.0, 3.0])))
    np.testing.assert_allclose(back, [1.0, 2.0, 3.0])


def test_uids_are_validated_and_derived_deterministically():
    assert is_valid_uid("1.2.840.10008.5.1.4.1.1.20")
    for bad in ("", "1..2", "1.02", "../etc", "1.2.a", "1." + "2" * 70, None):
        assert not is_valid_uid(bad)
    with pytest.raises(InvalidUIDError, match="SOPInstanceUID"):
        validate_uid("../../x", "SOPInstanceUID")
    first = deterministic_uid("1.2.3", "spect_mpi", "1.0", b"content")
    assert first == deterministic_uid("1.2.3", "spect_mpi", "1.0", b"content")
    assert first != deterministic_uid("1.2.3", "spect_mpi", "1.1", b"content")
    assert deterministic_uid("ab", "c") != deterministic_uid("a", "bc")
    assert is_valid_uid(first) and first.startswith("2.25.")

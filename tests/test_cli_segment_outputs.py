"""What skseg segment writes beside the masks' record."""

import types
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from skseg._cli import segment_outputs
from skseg._cli.inputs import InputImage
from skseg._run_record import describe_fit, new_record, read_record, record_output, write_record


def test_a_stop_while_recording_leaves_every_written_mask_recorded(tmp_path, monkeypatch):
    # Ctrl-C can land while the finished writes are being recorded: every
    # mask on disk must still be in the record, so that a later run neither
    # redoes it nor leaves it behind as another fit's.
    out = tmp_path / "out"
    out.mkdir()
    record = new_record(describe_fit(model="x"))
    write_record(out, record)
    images = [InputImage(Path(f"in/{i}.jpg"), PurePosixPath(f"{i}.jpg"), Path(f"in/{i}.jpg"))
              for i in range(20)]
    calls = []

    def stopped_on_the_third(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return record_output(*args, **kwargs)

    monkeypatch.setattr(segment_outputs, "record_output", stopped_on_the_third)
    masks = (np.ones((4, 4), np.uint8) for _ in images)
    with pytest.raises(KeyboardInterrupt):
        segment_outputs.write_masks(types.SimpleNamespace(output=out, overlay=False, quiet=True),
                                    images, masks, record, {}, {im: "d" for im in images}, None)
    on_disk = {path.name for path in out.glob("*.png")}
    assert len(on_disk) > 3 and on_disk == set(read_record(out)["outputs"])

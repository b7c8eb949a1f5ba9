"""What the docs promise a Python caller with a broken image in the list (docs/tag.md, "From Python")."""

from __future__ import annotations

import numpy as np
import pytest

from ram_edge import Tagger
from ram_edge.default_model import default_model_path
from ram_edge.errors import ImageError

pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")


def test_tag_raises_on_the_first_bad_image_and_tag_many_reports_it_per_image(tmp_path):
    good = default_model_path("checkpoint").parent / "examples" / "scene-1.png"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with Tagger.load(default_model_path("bundle_fp32"), runtime="ort") as tagger:
        with pytest.raises(ImageError, match="broken.jpg"):
            tagger.tag([good, broken])
        results, probs = tagger.tag_many([good, broken, good])
        assert [r.ok for r in results] == [True, False, True] and "broken.jpg" in str(results[1].error)
        assert np.isnan(probs[1]).all() and np.isfinite(probs[[0, 2]]).all()
        assert [t.tag for t in results[0].tags] == [t.tag for t in tagger.tag(good)[0].tags]

"""Remake ``docs/_static/report.png``, the screenshot of ``skseg report``
that the command-line page shows.

It segments the demo's synthetic scenes (those of ``skseg demo``, with its
untrained ViT) into a temporary folder, writes the report and photographs
it with headless Chromium (``apt-get install chromium``)::

    python docs/report_screenshot.py
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from skseg._demo import DEMO_MODEL
from skseg.datasets import make_scenes

SCREENSHOT = Path(__file__).parent / "_static" / "report.png"
WINDOW = (960, 1000)


def main():
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                    "google-chrome"))), None)
    if browser is None:
        sys.exit("no Chromium on the PATH: apt-get install chromium")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        images, _ = make_scenes(n_images=24, n_classes=3, image_size=(160, 160),
                                random_state=0)
        (scratch / "scenes").mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(scratch / "scenes" / f"scene{i:02d}.png")
        skseg = [sys.executable, "-m", "skseg"]
        # Relative paths, as a user types them, for the page to show.
        here = os.path.abspath(os.path.dirname(os.path.dirname(__file__)))
        environment = {**os.environ, "HOME": os.fspath(scratch),
                       "PYTHONPATH": os.pathsep.join(filter(None, [
                           here, os.environ.get("PYTHONPATH")]))}
        subprocess.run([*skseg, "segment", "scenes", "-o", "masks", "--model", DEMO_MODEL,
                        "--random-weights", "--device", "cpu", "--random-state", "0",
                        "--no-cache", "-q"], check=True, cwd=scratch, env=environment)
        subprocess.run([*skseg, "report", "masks", "--examples", "6", "-q"], check=True,
                       cwd=scratch, env=environment)
        raw = scratch / "page.png"
        command = [browser, "--headless", "--disable-gpu", "--hide-scrollbars",
                   "--force-color-profile=srgb", "--force-device-scale-factor=1",
                   f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={raw}",
                   (scratch / "masks" / "report" / "index.html").as_uri()]
        if os.geteuid() == 0:
            command.insert(1, "--no-sandbox")
        subprocess.run(command, check=True, capture_output=True, env=environment)
        with Image.open(raw) as page:
            # 256 colours keep the page legible at a fraction of the bytes.
            page.convert("RGB").quantize(256).save(SCREENSHOT, optimize=True)
    print(f"{SCREENSHOT}: {SCREENSHOT.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()

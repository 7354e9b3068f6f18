"""The ``index.html`` pages (callbacks/pages.py) in a real browser, opened from disk: 10,000 rows, a page of them at
a time, sorted by a score, filtered by name, images linked relatively (names with spaces and non-ASCII)."""

import shutil

import numpy as np
import pytest
from PIL import Image

from pix2pix_lit.callbacks.pages import ROWS_PER_PAGE, link, write_page

from conftest import page_data

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _page(tmp_path, n=10_000):
    folder = tmp_path / "test report"
    (folder / "images" / "sub dir").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):  # a few real files; the other rows point at them too (10,000 files are not the subject)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "images" / "sub dir" / f"ü {i}.png")
    psnr = rng.uniform(10, 30, n)
    rows = [{"name": f"img{i:05d}.png", "output": link(folder / "images" / "sub dir" / f"ü {i % 3}.png", folder),
             "psnr": float(psnr[i]), "ssim": float("nan") if i == 7 else 0.5} for i in range(n)]
    path = write_page(folder, "test: 10000 images", rows, ["output"], ["psnr", "ssim"], {"fid": 12.5, "split": "test"})
    return path, psnr


def test_the_page_data_is_the_rows_with_non_finite_scores_empty(tmp_path):
    path, psnr = _page(tmp_path, n=20)
    data = page_data(path)
    assert len(data["rows"]) == 20 and data["rows"][7]["ssim"] is None  # JSON has no NaN
    assert data["rows"][4]["output"] == "images/sub%20dir/%C3%BC%201.png"  # relative, escaped
    assert data["summary"] == {"fid": 12.5, "split": "test"}


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_ten_thousand_rows_open_sort_filter_and_page_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    path, psnr = _page(tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1000, "height": 1400})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(path.as_uri())
        rows = page.locator("#rows tbody tr")
        assert rows.count() == ROWS_PER_PAGE
        assert "page 1 of 100 (10000 rows)" in page.locator("#where").text_content()
        assert page.locator("#summary").text_content().replace(" ", "").startswith("fid12.5")
        page.wait_for_function("[...document.images].slice(0, 3).every(i => i.complete && i.naturalWidth === 32)")
        page.locator("th.score", has_text="psnr").click()  # ascending
        first = rows.nth(0).locator("td").nth(3).text_content()
        assert float(first) == pytest.approx(psnr.min(), abs=1e-4)
        page.locator("th.score", has_text="psnr").click()  # descending
        assert float(rows.nth(0).locator("td").nth(3).text_content()) == pytest.approx(psnr.max(), abs=1e-4)
        page.locator("#next").click()
        assert "page 2 of 100" in page.locator("#where").text_content()
        page.fill("#filter", "img0999")
        assert rows.count() == 10 and "(10 rows" in page.locator("#where").text_content()
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot))
        browser.close()
    assert all(u.startswith("file://") for u in requests)  # nothing fetched from elsewhere
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 10  # the rows and their images are drawn, not a blank page

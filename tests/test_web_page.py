"""The web page `biomx serve` shows at `/`, in a real headless Chromium (Debian's chromium and
chromedriver; `make test` installs them): a chest X-ray PNG uploaded through the file input comes
back with the label Python predicts, a Grad-CAM image, and the model card is on the page.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from biomx.predictor import load
from servers import serve, train_image_run

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs Debian's chromium and chromium-driver (make test installs them)"),  # fmt: skip
]
webdriver = pytest.importorskip("selenium.webdriver")


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1024"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    # An explicit driver path: selenium-manager never looks for (or downloads) a browser.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def run(tmp_path_factory, png_folder) -> Path:
    return train_image_run(tmp_path_factory.mktemp("web"), png_folder, "xray_page")


def test_upload_shows_the_python_label_and_an_explanation(run, png_folder, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    predictor = load(run)
    images = sorted(png_folder.rglob("*.png"))[:24]
    labels = [str(label) for label in predictor.predict(images)]
    # The rarest predicted label: a page that always showed the same class would not pass.
    expected = min(labels, key=labels.count)
    image = images[labels.index(expected)].resolve()
    with serve(run, log=tmp_path / "serve.log") as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        card = wait.until(lambda d: d.find_element(By.ID, "card").get_attribute("data-model") == run.name
                          and d.find_element(By.ID, "card"))  # fmt: skip
        card_text = card.text
        browser.find_element(By.ID, "file").send_keys(str(image))  # what a user's file dialog does
        browser.find_element(By.ID, "submit").click()
        wait.until(lambda d: d.find_element(By.ID, "result").get_attribute("data-state") == "done"
                   or d.find_element(By.ID, "error").text)  # fmt: skip
        error = browser.find_element(By.ID, "error").text
        label = browser.find_element(By.ID, "label").text
        explanation = browser.find_element(By.ID, "explanation")
        width = wait.until(lambda d: d.execute_script(
            "const img = arguments[0]; return img.complete && img.naturalWidth;", explanation))  # fmt: skip
        shown = browser.find_element(By.ID, "result").is_displayed() and explanation.is_displayed()
    assert not error, f"the page says: {error}"
    assert label == expected, f"the page says {label!r}, Python predicts {expected!r}"
    assert width > 0 and shown  # a decoded Grad-CAM image, on screen
    assert run.name in card_text and "small_cnn" in card_text
    assert ", ".join(map(str, predictor.classes_)) in card_text  # the classes the model answers

#!/usr/bin/env python3
"""A technician at the appliance's page, in a real headless browser.

Debian's chromium, driven through chromium-driver by selenium, does what a
technician does on `updater serve`'s page (docs/api.md, "The page") and
checks what the page shows. One step a run:

  install  --bundle PATH [--activate now|later]   log in, upload, watch the
           progress reach 100 %, see the checks, activate it (later: by the
           button), see it in the history
  rollback --to VERSION   log in, ask for the rollback, check that the
           confirmation names VERSION, confirm
  reboot   log in, reboot
  fleet --action ID --answer confirm|deny   log in, see the fleet server's
           request to confirm action ID, answer it

Every step logs in with --user and the password in $SWITCHBACK_PASSWORD.
A screenshot and the page's HTML are saved in --shots at the end of each
step and at a failure. Exit 0 when every check held, 1 otherwise, with
the failed check on stderr.
"""

import argparse
import os
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait


class Failed(Exception):
    pass


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1200,1600",
                "--user-data-dir=" + tempfile.mkdtemp(prefix="chromium-")):
        options.add_argument(arg)
    # The driver named, so that selenium never looks for one online.
    service = webdriver.ChromeService(
        executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def shot(driver, shots, name):
    os.makedirs(shots, exist_ok=True)
    driver.save_screenshot(os.path.join(shots, name + ".png"))
    with open(os.path.join(shots, name + ".html"), "w") as f:
        f.write(driver.page_source)


def text(driver, element_id):
    return driver.find_element(By.ID, element_id).text


def wait_for(driver, what, check, timeout):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: check(d))
    except Exception:
        raise Failed("%s (the page says: %r)" % (what, text(driver, "message")))


def login(driver, url, user, password, timeout):
    driver.get(url)
    wait_for(driver, "the login form shows", EC.visibility_of_element_located((By.ID, "login-user")), timeout)
    driver.find_element(By.ID, "login-user").send_keys(user)
    driver.find_element(By.ID, "login-password").send_keys(password)
    driver.find_element(By.ID, "login-submit").click()
    wait_for(driver, "the status shows after the login",
             lambda d: d.find_element(By.ID, "app").is_displayed() and "Running" in text(d, "running"),
             timeout)
    print("logged in: " + text(driver, "running"))


def history_rows(driver):
    rows = driver.find_elements(By.CSS_SELECTOR, "#history tbody tr")
    return [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in rows]


def install(driver, args):
    driver.find_element(By.ID, "bundle").send_keys(os.path.abspath(args.bundle))
    now = driver.find_element(By.ID, "activate-now")
    if now.is_selected() != (args.activate == "now"):
        now.click()
    driver.find_element(By.ID, "install").click()
    seen = set()

    def done(d):
        # Read once: a fast install goes from a few per cent to 100 %
        # between two reads, and the one the check passed on is the one seen.
        percent = text(d, "percent")
        seen.add(percent)
        return percent == "100 %" and "Installed" in text(d, "message")
    wait_for(driver, "the progress reaches 100 % and the install ends", done, args.timeout)
    print("progress seen: " + ", ".join(sorted(seen, key=lambda p: int(p.split()[0]))))
    checks = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#checks li")]
    print("checks: " + " | ".join(checks))
    for want in ("Signature verified", "Written", "Read back"):
        if not any(c.startswith(want) for c in checks):
            raise Failed("the check %r is not listed: %r" % (want, checks))
    message = text(driver, "message")
    print("install: " + message)
    if args.activate == "later":
        wait_for(driver, "the activate button shows",
                 lambda d: d.find_element(By.ID, "activate").is_displayed(), args.timeout)
        driver.find_element(By.ID, "activate").click()
        wait_for(driver, "the release is activated",
                 lambda d: text(d, "message").startswith("Activated"), args.timeout)
        print("activate: " + text(driver, "message"))
    # A release on trial is not one to go back to.
    wait_for(driver, "no rollback offered to a release on trial",
             lambda d: not d.find_element(By.ID, "rollback").is_displayed(), args.timeout)
    wait_for(driver, "the install is in the history",
             lambda d: any(r[1] == "install" for r in history_rows(d)), args.timeout)
    print("history: %d entries, newest %r" % (len(history_rows(driver)), history_rows(driver)[0]))


def rollback(driver, args):
    button = driver.find_element(By.ID, "rollback")
    wait_for(driver, "the rollback button shows", lambda d: button.is_displayed(), args.timeout)
    if button.text != "Roll back to " + args.to:
        raise Failed("the rollback button says %r, not 'Roll back to %s'" % (button.text, args.to))
    button.click()
    dialog = driver.find_element(By.ID, "confirm-rollback")
    wait_for(driver, "the confirmation opens", lambda d: dialog.is_displayed(), args.timeout)
    if args.to not in text(driver, "confirm-text"):
        raise Failed("the confirmation does not name %s: %r" % (args.to, text(driver, "confirm-text")))
    print("confirmation: " + text(driver, "confirm-text"))
    driver.find_element(By.ID, "confirm-yes").click()
    wait_for(driver, "the rollback is done",
             lambda d: text(d, "message").startswith("Rolled back"), args.timeout)
    print("rollback: " + text(driver, "message"))
    wait_for(driver, "the rollback is in the history",
             lambda d: any(r[1] == "rollback" for r in history_rows(d)), args.timeout)


def reboot(driver, args):
    driver.find_element(By.ID, "reboot").click()
    wait_for(driver, "the reboot question", EC.alert_is_present(), args.timeout)
    driver.switch_to.alert.accept()
    wait_for(driver, "the reboot is under way",
             lambda d: text(d, "message").startswith("Rebooting"), args.timeout)
    print("reboot: " + text(driver, "message"))


def fleet(driver, args):
    wait_for(driver, "the fleet server's request shows",
             lambda d: d.find_element(By.ID, "fleet").is_displayed(), args.timeout)
    asked = text(driver, "fleet-text")
    if "action " + args.action not in asked:
        raise Failed("the request does not name action %s: %r" % (args.action, asked))
    print("asked: " + asked)
    driver.find_element(By.ID, "fleet-" + args.answer).click()
    said = "Action %s: %s" % (args.action, {"confirm": "confirmed", "deny": "denied"}[args.answer])
    wait_for(driver, "the answer is taken", lambda d: text(d, "message").startswith(said), args.timeout)
    print("fleet: " + text(driver, "message"))
    wait_for(driver, "the request is gone once answered",
             lambda d: not d.find_element(By.ID, "fleet").is_displayed(), args.timeout)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--shots", required=True)
    p.add_argument("--timeout", type=float, default=60)
    steps = p.add_subparsers(dest="step", required=True)
    i = steps.add_parser("install")
    i.add_argument("--bundle", required=True)
    i.add_argument("--activate", choices=("now", "later"), default="later")
    r = steps.add_parser("rollback")
    r.add_argument("--to", required=True)
    steps.add_parser("reboot")
    f = steps.add_parser("fleet")
    f.add_argument("--action", required=True)
    f.add_argument("--answer", choices=("confirm", "deny"), required=True)
    args = p.parse_args()
    password = os.environ["SWITCHBACK_PASSWORD"]
    driver = browser()
    started = time.monotonic()
    try:
        login(driver, args.url, args.user, password, args.timeout)
        {"install": install, "rollback": rollback, "reboot": reboot, "fleet": fleet}[args.step](driver, args)
        shot(driver, args.shots, args.step)
        print("%s: done in %.1f s" % (args.step, time.monotonic() - started))
        return 0
    except Exception as e:
        try:
            shot(driver, args.shots, args.step + "-failed")
        except Exception:
            pass
        print("%s failed: %s (screenshot in %s)" % (args.step, e, args.shots), file=sys.stderr)
        return 1
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())

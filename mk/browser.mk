# Headless Chromium for the HTML gallery's browser test (tests/unit/test_gallery.py) and for
# making docs/gallery.png. Included by the Makefile (-include mk/*.mk).
#
#   make browser   install Debian's chromium (and a font) when no chromium is on PATH; quick when present
#
# Runs apt-get as root, or through sudo otherwise. The test never skips: without a browser it
# fails and says to run `make browser`.

BROWSER_PACKAGES ?= chromium fonts-dejavu-core

.PHONY: browser

browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
	  echo "browser: $$(command -v chromium || command -v chromium-browser) is installed"; \
	else \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "browser: installing $(BROWSER_PACKAGES) with apt-get"; \
	  $$SUDO apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(BROWSER_PACKAGES) \
	  && echo "browser: $$(command -v chromium) is installed"; \
	fi

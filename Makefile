# Two commands on a fresh machine:  `make demo` (install, fine-tune, evaluate) and `make test`.
PY ?= python3
VENV ?= .venv
MIRROR ?= ../shared
RUN ?= runs/exp1
BIN := $(VENV)/bin
export EDGESIGHT_MIRROR := $(abspath $(MIRROR))

.PHONY: install demo test lint tflite-runtime clean

$(BIN)/edgesight: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[train,export,dev]'
	touch $@

install: $(BIN)/edgesight

# tflite-runtime 2.14 (the Raspberry Pi wheel) needs numpy<2, so it lives in its own venv; the tests
# run the exported files in it through a subprocess.
.venv-tflite/bin/python:
	$(PY) -m venv .venv-tflite
	.venv-tflite/bin/pip install -q "tflite-runtime==2.14.0" "numpy<2" opencv-python-headless pytest
tflite-runtime: .venv-tflite/bin/python

demo: install
	$(BIN)/edgesight train --out $(RUN)
	$(BIN)/edgesight eval $(RUN)/best.pt --coco $(RUN)/val.json --save-predictions $(RUN)/val-predictions.json \
		--pr-curve $(RUN)/pr.png
	$(BIN)/edgesight predict $(RUN)/best.pt $(MIRROR)/datasets/roadsign_kaggle_stop/images/road160.png \
		$(MIRROR)/datasets/coco128/images/val2017/000000000139.jpg --out $(RUN)/annotated

test: install tflite-runtime
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .venv-tflite runs build *.egg-info

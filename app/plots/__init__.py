"""Plots of jobs and experiments, drawn with matplotlib (Agg/SVG canvases, no pyplot).

matplotlib is imported on the first plot only (``render.py``), so an API process that
draws nothing never loads it. Every plot is a pure function of typed data: the services
read the rows, these modules draw."""

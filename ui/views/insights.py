"""The Insights page script (registered by ui/app.py); the page lives in ui/insights.py."""

from ui.insights import render

render()

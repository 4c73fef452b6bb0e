"""The Support page script (registered by ui/app.py); the page lives in ui/support.py."""

from ui.support import render

render()

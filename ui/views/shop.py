"""The Shop page script (registered by ui/app.py); the page lives in ui/shop.py."""

from ui.shop import render

render()

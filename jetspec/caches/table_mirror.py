"""What a device table of a paged cache holds, mirrored on the host (`paged.py`): so that a page
given back and taken again is not sent to the device again."""

from __future__ import annotations


class TableMirror:
    """The page list a device table holds (its entries past the pages in use stay there, unread), and
    how many leading pages are known to be what the host holds. Pages change at the tail (a commit
    gives back the last ones, a begin takes new ones), so a sync compares only past that prefix."""

    def __init__(self) -> None:
        self.pages: list[int] = []
        self.known = 0  # leading pages known equal to the host's

    def cut(self, n: int) -> None:
        """The host's pages from index n on were given back (others may take their place)."""
        self.known = min(self.known, n)

    def sync(self, pages: list[int]) -> int:
        """The host now holds `pages` -> how many leading pages the table already has (the caller
        sends the rest); the table then holds `pages` (and what it held past them)."""
        same = min(self.known, len(pages))
        while same < len(pages) and same < len(self.pages) and pages[same] == self.pages[same]:
            same += 1
        self.pages[: len(pages)] = pages
        self.known = len(pages)
        return same

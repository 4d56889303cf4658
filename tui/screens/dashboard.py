"""The dashboard pane: the host streams a sample at its own pace; the pane shows each one,
in tabs picked with 1 to 4 (overview, processes, disks and network, log)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer

from tui.screens.pane import PaneScreen
from tui.widgets.dashboard import DashboardView

INTERVAL_STEPS = (1, 2, 5, 10, 30)


class DashboardScreen(PaneScreen):
    kind = "dashboard"
    subsystem = "dashboard"
    BINDINGS = [
        *PaneScreen.BINDINGS,
        Binding("escape,q", "leave", "Back", id="dashboard.back"),
        Binding("1", "tab('overview')", "Overview", show=False, id="dashboard.overview"),
        Binding("2", "tab('processes')", "Processes", show=False, id="dashboard.processes"),
        Binding("3", "tab('storage')", "Disks", show=False, id="dashboard.storage"),
        Binding("4", "tab('log')", "Log", show=False, id="dashboard.log"),
        Binding("s", "sort", "Sort", id="dashboard.sort"),
        Binding("plus,equals_sign", "slower", "Slower", id="dashboard.slower"),
        Binding("minus", "faster", "Faster", id="dashboard.faster"),
    ]

    def __init__(self, session, connector, password) -> None:
        super().__init__(session, connector, password)
        self.interval = 2

    def compose(self) -> ComposeResult:
        yield self.status_bar()
        yield DashboardView(id="dashboard")
        yield Footer(show_command_palette=False)  # ctrl+p still opens it

    def on_mount(self) -> None:
        self.follow()

    def connected(self) -> None:
        if self.interval != 2 and self.channel is not None:  # a reopened channel: our pace
            self.channel.send({"interval": self.interval})
        self.set_state(f"live, every {self.interval}s")

    def received(self, sample: dict) -> None:
        for view in self.query(DashboardView).results(DashboardView):  # none once closing
            view.show(sample)

    def action_tab(self, tab: str) -> None:
        self.query_one(DashboardView).show_tab(tab)

    def action_sort(self) -> None:
        """Sort the processes, and show them: a sort of a table out of sight helps no one."""
        view = self.query_one(DashboardView)
        view.show_tab("processes")
        key = view.cycle_process_sort()
        self.notify(f"Processes sorted by {key}.", timeout=2)

    def _set_interval(self, step: int) -> None:
        index = INTERVAL_STEPS.index(self.interval) if self.interval in INTERVAL_STEPS else 1
        self.interval = INTERVAL_STEPS[max(0, min(len(INTERVAL_STEPS) - 1, index + step))]
        if self.channel is not None:
            self.channel.send({"interval": self.interval})
        self.set_state(f"live, every {self.interval}s")

    def action_slower(self) -> None:
        self._set_interval(+1)

    def action_faster(self) -> None:
        self._set_interval(-1)

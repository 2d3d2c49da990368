// The console's only script: live Ready cells and conditions from server-sent events. Everything works
// without it; it only spares a reload. No framework, no build step.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const live = document.querySelector("[data-watch]");
  if (!live || !window.EventSource) return;
  const source = new EventSource(live.getAttribute("data-watch"));
  source.addEventListener("change", (e) => {
    const d = JSON.parse(e.data);
    document.querySelectorAll("[data-key]").forEach((el) => {
      if (el.getAttribute("data-key") !== d.key) return;
      const cell = el.querySelector(".ready-cell");
      // The server renders and escapes the cell; it is the same markup as the page's.
      if (cell) cell.innerHTML = d.ready;
    });
    // A detail page's conditions table, rendered and escaped by the server as well.
    document.querySelectorAll("[data-conditions]").forEach((el) => {
      if (el.getAttribute("data-conditions") === d.key) el.innerHTML = d.conditions;
    });
  });
  source.addEventListener("delete", (e) => {
    const d = JSON.parse(e.data);
    document.querySelectorAll("tr[data-key]").forEach((el) => {
      if (el.getAttribute("data-key") === d.key) el.remove();
    });
  });
});

// The page as a tool: Ctrl/Cmd+Enter runs from anywhere, the form is saved as you type
// (jobs.js keeps it), and the output pane comes into view when a job starts: it is sticky
// beside the form on a wide screen; on a phone (one column) the page scrolls to it.

const ONE_COLUMN = "(max-width: 820px)";
const SAVE_AFTER_MS = 300;

export function setupLayout({ form, save }) {
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    if (document.querySelector("dialog[open]")) return; // a dialog has the keyboard
    event.preventDefault();
    form.requestSubmit();
  });
  let timer = null;
  const later = () => {
    clearTimeout(timer);
    timer = setTimeout(save, SAVE_AFTER_MS);
  };
  form.addEventListener("input", later);
  form.addEventListener("change", later);
  form.addEventListener("click", (event) => {
    if (event.target.closest("#reset")) later();
  });
}

// Bring the output pane into view, at its top: scrolled to on a phone (or when `always`).
export function showOutput(always = false) {
  const pane = document.getElementById("output-pane");
  if (!pane) return;
  pane.scrollTop = 0;
  if (always || window.matchMedia(ONE_COLUMN).matches) pane.scrollIntoView({ block: "start" });
}

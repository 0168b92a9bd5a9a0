// Entry point of the agent console: `/agent/?session=<id>#token=<agent token>` opens the session
// console, `/agent/` without a token the home (sessions list and creation).

import { startHome } from "./home.js";
import { startConsole } from "./console.js";

function main() {
  const hash = new URLSearchParams(location.hash.replace(/^#/, ""));
  const token = hash.get("token");
  const sessionId = new URLSearchParams(location.search).get("session");
  // Only one view stays in the document, so every data-testid is unique on the page.
  if (token) {
    document.getElementById("home").remove();
    startConsole({ token, sessionId });
  } else {
    document.getElementById("console").remove();
    startHome();
  }
}

main();

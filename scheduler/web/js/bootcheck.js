// Not a module, and loaded before the dashboard's modules: when one of them cannot be
// fetched (a dropped connection, a proxy refusing a file), no module code runs at all,
// so only this can say why the page stays empty and offer to load it again.
"use strict";

document.getElementById("main-module").addEventListener("error", () => {
  const app = document.getElementById("app");
  const box = document.createElement("div");
  box.className = "boot-error";
  box.setAttribute("role", "alert");
  const title = document.createElement("h1");
  title.textContent = "The dashboard could not be loaded";
  const text = document.createElement("p");
  text.textContent = "A file of the page did not arrive. The scheduler may be restarting, or the connection dropped.";
  const again = document.createElement("button");
  again.type = "button";
  again.className = "btn btn-primary";
  again.textContent = "Load again";
  again.addEventListener("click", () => location.reload());
  box.append(title, text, again);
  app.classList.remove("booting");
  app.replaceChildren(box);
});

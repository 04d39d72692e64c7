// The login form's "next": where to go back after logging in. On /login it is ?next=; on any other
// page (the server answers the login form in place of a page) it is that page itself.
(function () {
  "use strict";
  function samePath(value) {
    return typeof value === "string" && value.charAt(0) === "/" && value.charAt(1) !== "/" && value.charAt(1) !== "\\";
  }
  function fill() {
    var field = document.getElementById("next");
    if (!field) return;
    var next = location.pathname + location.search;
    if (location.pathname === "/login") {
      next = new URLSearchParams(location.search).get("next") || "/";
    } else {
      var query = new URLSearchParams(location.search);
      query.delete("token");
      var rest = query.toString();
      next = location.pathname + (rest ? "?" + rest : "");
    }
    field.value = samePath(next) ? next : "/";
    var failed = document.getElementById("login-failed");
    if (failed && location.pathname === "/login" && new URLSearchParams(location.search).has("failed")) {
      failed.hidden = false;
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fill);
  else fill();
})();

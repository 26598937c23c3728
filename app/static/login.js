import { api, go, NetworkError } from "./api.js";

const form = document.getElementById("login-form");
const error = document.getElementById("login-error");
const button = document.getElementById("login-button");

function showError(text) {
  error.textContent = text;
  error.hidden = false;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const username = form.username.value.trim();
  const password = form.password.value;
  if (!username || !password) {
    showError("Enter your username and password.");
    (username ? form.password : form.username).focus();
    return;
  }
  button.disabled = true;
  error.hidden = true;
  try {
    const res = await api("POST", "/api/login", { username, password });
    if (res.ok) {
      go("/");
      return;
    }
    if (res.status === 401) showError("Wrong username or password.");
    else showError(res.data?.message || `Login failed (HTTP ${res.status}).`);
  } catch (err) {
    if (!(err instanceof NetworkError)) throw err;
    showError("The server cannot be reached. Check your connection and try again.");
  } finally {
    button.disabled = false;
  }
  form.password.select();
  form.password.focus();
});

// Small DOM helpers every view uses.

export const $ = (id) => document.getElementById(id);

export function badge(text, className) {
  const span = document.createElement("span");
  span.className = `badge ${className}`;
  span.textContent = text;
  return span;
}

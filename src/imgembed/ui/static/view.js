// What the person sees: the image, the mask overlay and the prompts, and where a pointer is in
// pixels of the original image.
//
// The canvases have the original image's size (W x H) and are scaled by CSS only, so a mask pixel
// is an image pixel. Coordinates are continuous: (0, 0) is the top-left corner of the top-left
// pixel and (W, H) the bottom-right corner, as the server's segment takes them.

import { maskPixels } from "./masks.js";

const SVG = "http://www.w3.org/2000/svg";
const OVERLAY = [30, 144, 255, 120];
const CLEAR = [0, 0, 0, 0];
const MAX_ENLARGEMENT = 4;

export class Stage {
  /**
   * @param {HTMLElement} root Holds the canvases and the prompt layer.
   */
  constructor(root) {
    this.root = root;
    this.imageCanvas = root.querySelector("#image-canvas");
    this.maskCanvas = root.querySelector("#mask-canvas");
    this.prompts = root.querySelector("#prompt-layer");
    this.width = 0;
    this.height = 0;
  }

  /** Shows a decoded image at width x height (the server's orig_size) and clears the overlay. */
  show(bitmap, width, height) {
    this.width = width;
    this.height = height;
    for (const canvas of [this.imageCanvas, this.maskCanvas]) {
      canvas.width = width;
      canvas.height = height;
    }
    this.imageCanvas.getContext("2d").drawImage(bitmap, 0, 0, width, height);
    // Fit the page (small images are enlarged up to 4x); CSS max-width keeps it within narrower
    // windows, and the canvas's own aspect ratio sets the height.
    const available = this.root.parentElement.clientWidth || width;
    const scale = Math.min(available / width, (window.innerHeight * 0.75) / height, MAX_ENLARGEMENT);
    this.imageCanvas.style.width = `${Math.max(1, Math.floor(width * scale))}px`;
    this.prompts.setAttribute("viewBox", `0 0 ${width} ${height}`);
    this.root.hidden = false;
    this.clearMask();
    this.drawPrompts({ points: [], labels: [], box: null });
  }

  hide() {
    this.root.hidden = true;
  }

  /** Tints the pixels of a W x H 0/1 mask. */
  drawMask(mask) {
    const pixels = maskPixels(mask, this.width, this.height, OVERLAY, CLEAR);
    this.maskCanvas.getContext("2d").putImageData(pixels, 0, 0);
  }

  clearMask() {
    this.maskCanvas.getContext("2d").clearRect(0, 0, this.width, this.height);
  }

  /** Draws points (green foreground, red background) and the box, plus a box being dragged. */
  drawPrompts(prompt, draggedBox = null) {
    this.prompts.replaceChildren();
    const radius = Math.max(this.width, this.height) / 120 + 1;
    const rectangle = (box, className) => {
      const element = document.createElementNS(SVG, "rect");
      element.setAttribute("x", Math.min(box[0], box[2]));
      element.setAttribute("y", Math.min(box[1], box[3]));
      element.setAttribute("width", Math.abs(box[2] - box[0]));
      element.setAttribute("height", Math.abs(box[3] - box[1]));
      element.setAttribute("class", className);
      this.prompts.append(element);
    };
    if (prompt.box) rectangle(prompt.box, "box");
    if (draggedBox) rectangle(draggedBox, "box dragging");
    prompt.points.forEach(([x, y], index) => {
      const circle = document.createElementNS(SVG, "circle");
      circle.setAttribute("cx", x);
      circle.setAttribute("cy", y);
      circle.setAttribute("r", radius);
      circle.setAttribute("class", prompt.labels[index] === 1 ? "point foreground" : "point background");
      this.prompts.append(circle);
    });
  }

  /** A pointer event's position in original-image pixels, clamped to the image. */
  toImage(event) {
    const rect = this.imageCanvas.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * this.width;
    const y = ((event.clientY - rect.top) / rect.height) * this.height;
    return [Math.min(Math.max(x, 0), this.width), Math.min(Math.max(y, 0), this.height)];
  }

  /** How far apart two client positions are, in CSS pixels. */
  static distance(a, b) {
    return Math.hypot(a.clientX - b.clientX, a.clientY - b.clientY);
  }
}

// Painting an inpainting mask on the uploaded image.
// The mask itself is an offscreen canvas of the image's own size (white = repaint,
// black = keep); the visible canvas lies over the image and shows it in a translucent
// colour with an opaque outline, so it reads on any image.
// With `shown` set to opaque white on a black canvas it is a scribble pad instead: what
// you see is the mask itself (the ControlNet units draw their scribbles with it).

const SHOWN = [255, 0, 200, 120]; // rgba of painted pixels on the visible canvas (magenta)
const HISTORY = 30; // undo steps kept

export class MaskPainter {
  constructor(view, { shown = SHOWN } = {}) {
    this.view = view;
    this.shown = shown;
    this.viewCtx = view.getContext("2d");
    this.mask = document.createElement("canvas");
    this.maskCtx = this.mask.getContext("2d", { willReadFrequently: true });
    this.brush = 32;
    this.erasing = false;
    this.painting = false;
    this.last = null;
    this.painted = false;
    this.undoStack = []; // ImageData of the mask before each change
    this.redoStack = [];
    this.onChange = null; // called after every change (a stroke, clear, invert, undo, redo)
    view.addEventListener("pointerdown", (event) => this.start(event));
    view.addEventListener("pointermove", (event) => this.move(event));
    for (const type of ["pointerup", "pointercancel", "pointerleave"]) {
      view.addEventListener(type, () => this.stop());
    }
  }

  // a fresh, all-black mask for an image of this size
  resize(width, height) {
    for (const canvas of [this.mask, this.view]) {
      canvas.width = width;
      canvas.height = height;
    }
    this.clear();
    this.undoStack = [];
    this.redoStack = [];
    this.changed();
  }

  // remember the mask as it is, before a change
  record() {
    const { width, height } = this.mask;
    if (!width || !height) return;
    this.undoStack.push(this.maskCtx.getImageData(0, 0, width, height));
    if (this.undoStack.length > HISTORY) this.undoStack.shift();
    this.redoStack = [];
  }

  undo() {
    this.swap(this.undoStack, this.redoStack);
  }

  redo() {
    this.swap(this.redoStack, this.undoStack);
  }

  swap(from, to) {
    const pixels = from.pop();
    if (!pixels) return;
    const { width, height } = this.mask;
    to.push(this.maskCtx.getImageData(0, 0, width, height));
    this.maskCtx.putImageData(pixels, 0, 0);
    this.painted = true; // hasPaint() reads the pixels
    this.redraw();
    this.changed();
  }

  changed() {
    this.onChange?.();
  }

  // the overlay's colour, as [r, g, b, a]
  setColour(rgba) {
    this.shown = rgba;
    this.redraw();
  }

  // a mask from an image (white = repaint), scaled to the image being painted
  load(image) {
    this.record();
    const { width, height } = this.mask;
    this.maskCtx.globalCompositeOperation = "source-over";
    this.maskCtx.fillStyle = "#000";
    this.maskCtx.fillRect(0, 0, width, height);
    this.maskCtx.drawImage(image, 0, 0, width, height);
    this.painted = true;
    this.redraw();
    this.changed();
  }

  clear() {
    this.maskCtx.globalCompositeOperation = "source-over";
    this.maskCtx.fillStyle = "#000";
    this.maskCtx.fillRect(0, 0, this.mask.width, this.mask.height);
    this.painted = false;
    this.redraw();
    this.changed();
  }

  invert() {
    const { width, height } = this.mask;
    if (!width || !height) return;
    const pixels = this.maskCtx.getImageData(0, 0, width, height);
    const data = pixels.data;
    let any = false;
    for (let i = 0; i < data.length; i += 4) {
      const value = data[i] >= 128 ? 0 : 255;
      data[i] = data[i + 1] = data[i + 2] = value;
      data[i + 3] = 255;
      any ||= value === 255;
    }
    this.maskCtx.putImageData(pixels, 0, 0);
    this.painted = any;
    this.redraw();
    this.changed();
  }

  // rebuild the overlay from the mask (after clear/invert): the painted area in the
  // translucent colour, its edge pixels opaque so the outline shows on any image
  redraw() {
    const { width, height } = this.mask;
    if (!width || !height) return;
    const source = this.maskCtx.getImageData(0, 0, width, height).data;
    const shown = this.viewCtx.createImageData(width, height);
    const edge = [...this.shown.slice(0, 3), 255];
    const on = (x, y) => x < 0 || y < 0 || x >= width || y >= height || source[(y * width + x) * 4] >= 128;
    for (let i = 0; i < source.length; i += 4) {
      if (source[i] < 128) continue;
      const x = (i / 4) % width;
      const y = Math.floor(i / 4 / width);
      const inside = on(x - 1, y) && on(x + 1, y) && on(x, y - 1) && on(x, y + 1);
      shown.data.set(inside ? this.shown : edge, i);
    }
    this.viewCtx.putImageData(shown, 0, 0);
  }

  // pointer position in the image's own pixels (the canvas is scaled by CSS)
  point(event) {
    const box = this.view.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) / box.width) * this.view.width,
      y: ((event.clientY - box.top) / box.height) * this.view.height,
    };
  }

  start(event) {
    if (!this.mask.width) return;
    event.preventDefault();
    this.view.setPointerCapture?.(event.pointerId);
    this.record();
    this.painting = true;
    this.last = this.point(event);
    this.stroke(this.last, this.last);
  }

  move(event) {
    if (!this.painting) return;
    const next = this.point(event);
    this.stroke(this.last, next);
    this.last = next;
  }

  stop() {
    // overlapping translucent segments leave darker joins: redraw the overlay flat
    const was = this.painting;
    if (was) this.redraw();
    this.painting = false;
    this.last = null;
    if (was) this.changed();
  }

  stroke(from, to) {
    const [r, g, b, a] = this.shown;
    for (const [ctx, color] of [
      [this.maskCtx, this.erasing ? "#000" : "#fff"],
      [this.viewCtx, `rgba(${r}, ${g}, ${b}, ${a / 255})`],
    ]) {
      ctx.save();
      ctx.lineCap = "round";
      ctx.lineJoin = "round";
      ctx.lineWidth = this.brush;
      // on the overlay the eraser removes red; on the mask it paints black
      ctx.globalCompositeOperation = this.erasing && ctx === this.viewCtx ? "destination-out" : "source-over";
      ctx.strokeStyle = this.erasing && ctx === this.viewCtx ? "#000" : color;
      ctx.beginPath();
      ctx.moveTo(from.x, from.y);
      ctx.lineTo(to.x + 0.01, to.y);
      ctx.stroke();
      ctx.restore();
    }
    if (!this.erasing) this.painted = true;
  }

  // true when at least one pixel is white (to repaint)
  hasPaint() {
    const { width, height } = this.mask;
    if (!width || !this.painted) return false;
    const data = this.maskCtx.getImageData(0, 0, width, height).data;
    for (let i = 0; i < data.length; i += 4) if (data[i] >= 128) return true;
    return false;
  }

  dataUri() {
    return this.mask.toDataURL("image/png");
  }

  // the mask as a PNG file, for an upload
  blob() {
    return new Promise((resolve) => this.mask.toBlob(resolve, "image/png"));
  }
}

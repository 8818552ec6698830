// The image prompt: the "Image prompt (IP-Adapter)" section, offered only where the chosen
// model's schema has `ip_adapter_image` (the server lists it only where an IP-Adapter fits).
// Its image comes from a file, a drop or a paste and is uploaded through /v1/files, as the
// input image is; its scale and IP-Adapter are schema fields (the form's "ipadapter"
// group), sent only while an image is set.

import { api } from "./api.js";
import { blobOf } from "./controlnet.js";
import { acceptImages } from "./inputs.js";

export class ImagePromptPanel {
  // `form`: the SchemaForm holding the scale and adapter fields (group "ipadapter")
  constructor({ section, fileInput, dropZone, preview, figure, clearButton, error, form }) {
    Object.assign(this, { section, fileInput, dropZone, preview, figure, clearButton, error, form });
    this.file = null; // the chosen image (File or Blob)
    this.ref = null; // its URL once uploaded (or a URL reused from a prediction)
    fileInput.addEventListener("change", () => this.setFile(fileInput.files[0] || null));
    // a paste anywhere in the section (the drop zone takes focus on click)
    acceptImages(dropZone, (file) => this.setFile(file), { pasteTarget: section });
    clearButton.addEventListener("click", () => {
      this.setFile(null);
      fileInput.focus();
    });
  }

  // the section for a model's input schema (after the form was built from it)
  setModel(schema) {
    const properties = schema.properties || {};
    this.section.hidden = !this.available();
    // the adapter select only where there is a choice: one fitting adapter is the default
    const adapter = this.form.fields.get("ip_adapter");
    if (adapter) {
      const choices = (properties.ip_adapter && properties.ip_adapter.enum) || [];
      adapter.wrapper.hidden = choices.length < 2;
    }
  }

  available() {
    return this.form.has("ip_adapter_scale") || this.form.has("ip_adapter");
  }

  // whether the request carries an image prompt (its fields are sent only then)
  active() {
    return this.available() && !this.section.hidden && Boolean(this.file);
  }

  async setFile(file, ref = null) {
    this.error.textContent = "";
    this.file = file;
    this.ref = ref;
    if (!file) {
      this.fileInput.value = "";
      this.show();
      return;
    }
    try {
      await new Promise((resolve, reject) => {
        this.preview.onload = resolve;
        this.preview.onerror = () => reject(new Error("not an image this browser can read"));
        this.preview.src = URL.createObjectURL(file);
      });
    } catch (error) {
      this.error.textContent = `Could not read the file: ${error.message}`;
      this.file = null;
      this.ref = null;
    }
    this.show();
  }

  show() {
    this.figure.hidden = !this.file;
    this.clearButton.hidden = !this.file;
    this.section.classList.toggle("has-image", Boolean(this.file));
  }

  // `ip_adapter_image` for the request ({} without an image), uploaded once
  async value() {
    if (!this.active()) return {};
    if (!this.ref) this.ref = (await api.upload(this.file)).urls.get;
    return { ip_adapter_image: this.ref };
  }

  // an error the server gave on the image (or on the adapter while its select is hidden:
  // one fits, or none); the scale's and a shown select's go beside their fields
  showError(field, message) {
    if (!this.available()) return false;
    const adapter = this.form.fields.get("ip_adapter");
    const here = field === "ip_adapter_image" || (field === "ip_adapter" && (!adapter || adapter.wrapper.hidden));
    if (!here) return false;
    this.section.hidden = false;
    this.section.open = true;
    this.error.textContent = message;
    this.fileInput.focus();
    return true;
  }

  // an earlier prediction's image prompt back in the section (its fields are the form's)
  async restore(ref) {
    await this.setFile(null);
    if (!ref || !this.available()) return;
    try {
      await this.setFile(await blobOf(ref), ref.startsWith("data:") ? null : ref);
      this.section.open = true;
    } catch (error) {
      this.error.textContent = `Could not load the earlier image prompt: ${error.message}`;
    }
  }
}
